//! The consensus core must stay pure: no clock, file, socket, thread or async runtime. This
//! test reads every source under `node/src/consensus`, subfolders included, and fails if any of
//! them mentions one.

use std::path::{Path, PathBuf};

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

/// Every `.rs` file under `dir`, in subfolders too, sorted.
fn sources(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for entry in std::fs::read_dir(&d).expect("read source dir") {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

/// The files scanned and the lines that mention a forbidden item, as `path:line: text`.
fn scan(dir: &Path) -> (usize, Vec<String>) {
    let files = sources(dir);
    let mut offenders = Vec::new();
    for path in &files {
        let text = std::fs::read_to_string(path).expect("read source");
        for (no, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            for word in FORBIDDEN {
                if code.contains(word) {
                    offenders.push(format!("{}:{}: {}", path.display(), no + 1, line.trim()));
                }
            }
        }
    }
    (files.len(), offenders)
}

#[test]
fn consensus_module_imports_no_io_or_runtime() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("src")
        .join("consensus");
    let (checked, offenders) = scan(&dir);
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

#[test]
fn scan_reaches_nested_folders() {
    let dir = std::env::temp_dir().join(format!("keel-purity-{}", std::process::id()));
    let nested = dir.join("a").join("b");
    std::fs::create_dir_all(&nested).expect("create temp dirs");
    std::fs::write(dir.join("top.rs"), "fn pure() {}\n").expect("write");
    std::fs::write(nested.join("deep.rs"), "use std::time::Instant;\n").expect("write");
    let (checked, offenders) = scan(&dir);
    std::fs::remove_dir_all(&dir).expect("remove temp dirs");
    assert_eq!(checked, 2);
    assert!(
        offenders.iter().any(|o| o.contains("deep.rs:1")),
        "{offenders:?}"
    );
}
