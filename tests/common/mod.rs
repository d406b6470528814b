//! What the tests that start `keel server` processes share: one cluster at a time, free
//! port ranges, and a runtime for async clients.
#![allow(dead_code)] // Each test binary uses its own share of these.

use std::io::Write;
use std::net::TcpListener;
use std::process::{Command, Output, Stdio};
use std::sync::{Mutex, MutexGuard};

/// Runs `command` with `stdin` as its standard input and collects its output.
pub fn run_with_stdin(command: &mut Command, stdin: &str) -> Output {
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

/// One cluster at a time (within a test binary).
pub fn serial() -> MutexGuard<'static, ()> {
    static TURN: Mutex<()> = Mutex::new(());
    TURN.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A port `p` with `p..p + span` free, held by listeners pushed to `held`.
pub fn free_ports(span: u16, held: &mut Vec<TcpListener>) -> u16 {
    'again: for _ in 0..64 {
        let first = TcpListener::bind("127.0.0.1:0").unwrap();
        let base = first.local_addr().unwrap().port();
        let mut block = vec![first];
        for offset in 1..span {
            let Some(port) = base.checked_add(offset) else {
                continue 'again;
            };
            match TcpListener::bind(("127.0.0.1", port)) {
                Ok(l) => block.push(l),
                Err(_) => continue 'again,
            }
        }
        held.extend(block);
        return base;
    }
    panic!("no {span} consecutive free ports");
}

/// A small multi-threaded runtime for the async clients of a test.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}
