//! Hidden helpers for Keel's crash tests: processes that write and report what was
//! acknowledged, to be killed at random moments.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

use clap::Subcommand;
use keel_wal::{Wal, WalOptions};

#[derive(Subcommand)]
pub enum DebugCommand {
    /// Append records forever from several threads; print `ack <position> <value>` on
    /// stdout after each append is acknowledged. Record bytes are the value, repeated.
    WalWriter {
        dir: PathBuf,
        #[arg(long, default_value_t = 4)]
        writers: u64,
        #[arg(long, default_value_t = 256)]
        segment_kib: u64,
        /// Purge segments behind the last this many positions now and then (0: never),
        /// so that segment files get recycled.
        #[arg(long, default_value_t = 0)]
        purge_keep: u64,
    },
}

pub fn run(cmd: DebugCommand) -> Result<ExitCode, String> {
    match cmd {
        DebugCommand::WalWriter {
            dir,
            writers,
            segment_kib,
            purge_keep,
        } => {
            let opts = WalOptions {
                segment_bytes: segment_kib << 10,
                record_bytes_max: 16 << 10,
                batch_bytes_max: 32 << 10,
                ..WalOptions::default()
            };
            let wal = Arc::new(Wal::open(&dir, opts).map_err(|e| e.to_string())?);
            let out = Arc::new(Mutex::new(std::io::stdout()));
            std::thread::scope(|s| {
                for w in 0..writers {
                    let (wal, out) = (wal.clone(), out.clone());
                    s.spawn(move || {
                        for i in 0u64.. {
                            let value = w << 40 | i;
                            let record = wal_record(value);
                            let Ok(at) = wal.append(&[record]) else {
                                return;
                            };
                            let mut out = out.lock().expect("stdout lock");
                            let _ = writeln!(out, "ack {} {value}", at.first_lsn);
                            let _ = out.flush();
                            drop(out);
                            // Every 16th append of a writer: a run killed after a few
                            // milliseconds still purges (the log outlives the runs).
                            if purge_keep > 0 && i % 16 == 15 {
                                let _ = wal.purge_before(at.first_lsn.saturating_sub(purge_keep));
                            }
                        }
                    });
                }
            });
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The record the crash writer appends for `value`: its bytes, repeated to a length that
/// depends on the value, so records cross block boundaries at varied points.
pub fn wal_record(value: u64) -> Vec<u8> {
    let len = 8 * (1 + usize::try_from(value % 97).expect("small"));
    value
        .to_le_bytes()
        .iter()
        .copied()
        .cycle()
        .take(len)
        .collect()
}
