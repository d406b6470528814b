//! The consensus core must stay pure: no clock, file, socket, thread or async runtime. This
//! test reads the sources of `node/src/consensus` and fails if any of them mentions one.

use std::path::Path;

const FORBIDDEN: &[&str] = &[
    "std::fs",
    "std::net",
    "std::time",
    "std::thread",
    "std::process",
    "std::io",
    "tokio",
    "Instant",
    "SystemTime",
    "async fn",
    ".await",
];

#[test]
fn consensus_module_imports_no_io_or_runtime() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("src")
        .join("consensus");
    let mut checked = 0;
    let mut offenders = Vec::new();
    for entry in std::fs::read_dir(&dir).expect("read consensus dir") {
        let path = entry.expect("dir entry").path();
        if path.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("read source");
        for (no, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            for word in FORBIDDEN {
                if code.contains(word) {
                    offenders.push(format!("{}:{}: {}", path.display(), no + 1, line.trim()));
                }
            }
        }
        checked += 1;
    }
    assert!(
        checked >= 10,
        "expected the consensus sources, found {checked} files"
    );
    assert!(
        offenders.is_empty(),
        "I/O or runtime in the consensus core:\n{}",
        offenders.join("\n")
    );
}
