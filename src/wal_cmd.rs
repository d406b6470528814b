//! `keel wal verify|dump DIR`: check or list a log without changing it.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;

/// Read-only inspection of a log directory.
#[derive(Subcommand)]
pub enum WalCommand {
    /// Verify every segment and frame. Prints a summary, or the first problem with its
    /// segment file and offset (exit code 1). A torn tail counts as a problem here,
    /// although opening the log would repair it.
    Verify {
        /// The log directory.
        dir: PathBuf,
    },
    /// List segments and frames: position, record count and lengths, checksum status.
    Dump {
        /// The log directory.
        dir: PathBuf,
        /// Show each record's length, not just each frame.
        #[arg(long)]
        records: bool,
        /// Stop listing frames of a segment after this many (0 = all).
        #[arg(long, default_value_t = 0)]
        limit: usize,
    },
}

pub fn run(cmd: WalCommand) -> Result<ExitCode, String> {
    match cmd {
        WalCommand::Verify { dir } => verify(&dir),
        WalCommand::Dump {
            dir,
            records,
            limit,
        } => dump(&dir, records, limit),
    }
}

fn check_dir(dir: &std::path::Path) -> Result<(), String> {
    if !dir.is_dir() {
        return Err(format!("{} is not a directory", dir.display()));
    }
    Ok(())
}

fn verify(dir: &std::path::Path) -> Result<ExitCode, String> {
    check_dir(dir)?;
    match keel_wal::verify(dir) {
        Ok(report) => {
            println!("ok: {}", dir.display());
            println!("segments      {}", report.segments);
            println!("frames        {}", report.frames);
            println!("records       {}", report.records);
            println!("bytes         {}", report.bytes);
            if report.records > 0 {
                println!("first         {}", report.first_lsn);
                println!("last          {}", report.next_lsn - 1);
            } else {
                println!("next          {}", report.next_lsn);
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            println!("FAILED: {e}");
            Ok(ExitCode::from(1))
        }
    }
}

fn dump(dir: &std::path::Path, records: bool, limit: usize) -> Result<ExitCode, String> {
    check_dir(dir)?;
    let segments = keel_wal::inspect(dir).map_err(|e| e.to_string())?;
    let mut problems = 0;
    for seg in &segments {
        let header = match &seg.header {
            Ok(Some(h)) if h.is_unused() => "recycled, not written yet (spare)".into(),
            Ok(Some(h)) if h.recycled => format!("first position {} (recycled file)", h.first_lsn),
            Ok(Some(h)) => format!("first position {}", h.first_lsn),
            Ok(None) => "never written (spare)".into(),
            Err(e) => format!("BAD HEADER: {e}"),
        };
        println!(
            "segment {} ({}, {} bytes): {header}",
            seg.seq,
            seg.path.display(),
            seg.file_bytes
        );
        for (i, frame) in seg.frames.iter().enumerate() {
            if limit > 0 && i == limit {
                println!("  ... {} more frames", seg.frames.len() - limit);
                break;
            }
            let count = frame.record_lens.len() as u64;
            println!(
                "  offset {:>10}  positions {}..={}  records {}  bytes {}  crc ok",
                frame.offset,
                frame.first_lsn,
                frame.first_lsn + count - 1,
                count,
                frame.len
            );
            if records {
                for (k, len) in frame.record_lens.iter().enumerate() {
                    println!("    position {}  length {len}", frame.first_lsn + k as u64);
                }
            }
        }
        if let Some((offset, reason)) = &seg.problem {
            problems += 1;
            println!("  offset {offset:>10}  BAD: {reason}");
        }
    }
    Ok(if problems == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
