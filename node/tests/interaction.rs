//! Scripted interaction tests: each file in `tests/testdata/` is a story of commands and their
//! expected output (`command`, a `----` line, the output, a blank line). Run with
//! `KEEL_REWRITE=1` to regenerate the expected output after an intended change.

mod common;

use std::fmt::Write as _;
use std::path::Path;

use common::{Env, test_config};
use keel_node::consensus::{ConfChange, ConfChangeSingle, ConfChangeTransition, ReadOnlyOption};

fn arg_list(value: &str) -> Vec<u64> {
    value
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().expect("node id"))
        .collect()
}

fn ids(args: &[&str]) -> Vec<u64> {
    args.iter().map(|a| a.parse().expect("node id")).collect()
}

fn run_command(env: &mut Env, line: &str) -> String {
    env.out.clear();
    let words: Vec<&str> = line.split_whitespace().collect();
    let (cmd, args) = words.split_first().expect("command");
    match *cmd {
        "add-nodes" => {
            let n: u64 = args[0].parse().expect("count");
            let start = env.nodes.keys().max().copied().unwrap_or(0) + 1;
            let new: Vec<u64> = (start..start + n).collect();
            let mut voters = new.clone();
            let mut learners = Vec::new();
            let mut pre_vote = true;
            let mut check_quorum = true;
            let mut lease = false;
            for a in &args[1..] {
                let (k, v) = a.split_once('=').expect("key=value");
                match k {
                    "voters" => voters = arg_list(v),
                    "learners" => learners = arg_list(v),
                    "pre-vote" => pre_vote = v == "true",
                    "check-quorum" => check_quorum = v == "true",
                    "lease" => lease = v == "true",
                    _ => panic!("unknown option {k}"),
                }
            }
            for id in new {
                let mut c = test_config(id);
                c.pre_vote = pre_vote;
                c.check_quorum = check_quorum;
                if lease {
                    c.read_only = ReadOnlyOption::LeaseBased;
                }
                env.add_node(c, &voters, &learners);
            }
            env.out.push_str("ok\n");
        }
        "campaign" => env.raw(ids(args)[0]).campaign(),
        "propose" => {
            let id = ids(&args[..1])[0];
            if let Err(e) = env.raw(id).propose(args[1].as_bytes().to_vec()) {
                let _ = writeln!(env.out, "error: {e:?}");
            }
        }
        "propose-conf-change" => {
            let id = ids(&args[..1])[0];
            let mut cc = ConfChange::default();
            for a in &args[1..] {
                if let Some(t) = a.strip_prefix("transition=") {
                    cc.transition = match t {
                        "implicit" => ConfChangeTransition::Implicit,
                        "explicit" => ConfChangeTransition::Explicit,
                        _ => ConfChangeTransition::Auto,
                    };
                    continue;
                }
                let node: u64 = a[1..].parse().expect("node id");
                cc.changes.push(match &a[..1] {
                    "v" => ConfChangeSingle::AddNode(node),
                    "l" => ConfChangeSingle::AddLearner(node),
                    _ => ConfChangeSingle::RemoveNode(node),
                });
            }
            if let Err(e) = env.raw(id).propose_conf_change(&cc) {
                let _ = writeln!(env.out, "error: {e:?}");
            }
        }
        "read-index" => {
            let id = ids(&args[..1])[0];
            if let Err(e) = env.raw(id).read_index(args[1].as_bytes().to_vec()) {
                let _ = writeln!(env.out, "error: {e:?}");
            }
        }
        "transfer-leader" => {
            let v = ids(args);
            if let Err(e) = env.raw(v[0]).transfer_leader(v[1]) {
                let _ = writeln!(env.out, "error: {e:?}");
            }
        }
        "process-ready" => {
            for id in ids(args) {
                if !env.process_ready(id) {
                    let _ = writeln!(env.out, "> {id} no Ready");
                }
            }
        }
        "process-append" => {
            for id in ids(args) {
                if !env.process_append(id) {
                    let _ = writeln!(env.out, "> {id} no append work");
                }
            }
        }
        "write-append" => {
            for id in ids(args) {
                if !env.write_append(id) {
                    let _ = writeln!(env.out, "> {id} no append work");
                }
            }
        }
        "ack-append" => {
            for id in ids(args) {
                if !env.ack_append(id) {
                    let _ = writeln!(env.out, "> {id} no held acknowledgement");
                }
            }
        }
        "process-apply" => {
            for id in ids(args) {
                if !env.process_apply(id) {
                    let _ = writeln!(env.out, "> {id} no apply work");
                }
            }
        }
        "deliver-msgs" => {
            for id in ids(args) {
                let (mine, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut env.net)
                    .into_iter()
                    .partition(|m| m.to == id);
                env.net = rest;
                for m in mine {
                    let _ = writeln!(env.out, "  deliver {}", common::fmt_msg(&m));
                    env.deliver_one(m);
                }
            }
        }
        "drop-msgs" => {
            let v = ids(args);
            env.net.retain(|m| !v.contains(&m.to));
        }
        "tick-heartbeat" => {
            for id in ids(args) {
                env.tick(id, 1);
            }
        }
        "tick-election" => {
            for id in ids(args) {
                let n = env.raw(id).basic_status().election_timeout_ticks;
                env.tick(id, n);
            }
        }
        "partition" => {
            // `partition 1 | 2 3`: cut every link between the two sides.
            let text = args.join(" ");
            let (a, b) = text.split_once('|').expect("two sides");
            let a: Vec<&str> = a.split_whitespace().collect();
            let b: Vec<&str> = b.split_whitespace().collect();
            for x in ids(&a) {
                for y in ids(&b) {
                    env.cut.insert((x, y));
                    env.cut.insert((y, x));
                }
            }
        }
        "heal" => env.cut.clear(),
        "stabilize" if args.is_empty() => env.stabilize(),
        "stabilize" => assert!(env.stabilize_only(&ids(args)), "did not stabilize"),
        "crash" => env.crash(ids(args)[0]),
        "restart" => env.restart(ids(args)[0]),
        "compact" => {
            let id = ids(args)[0];
            let ok = env.compact(id);
            let _ = writeln!(env.out, "compacted:{ok}");
        }
        "raft-log" => {
            for id in ids(args) {
                let s = env.log_string(id);
                let _ = writeln!(env.out, "{id}: {s}");
            }
        }
        "unstable" => {
            for id in ids(args) {
                let raw = env.raw(id);
                let st = raw.basic_status();
                let u = st.unstable;
                let entries = raw
                    .entries(u.offset, st.last_index + 1)
                    .expect("unstable entries");
                let _ = writeln!(
                    env.out,
                    "{id}: offset:{} offset_in_progress:{} entries:{} snapshot:{}",
                    u.offset,
                    u.offset_in_progress,
                    common::fmt_entries(&entries),
                    u.snapshot_index
                        .map_or(String::from("-"), |i| i.to_string())
                );
            }
        }
        "raft-state" => {
            for id in env.ids() {
                if !env.is_up(id) {
                    let _ = writeln!(env.out, "{id}: down");
                    continue;
                }
                let st = env.raw(id).basic_status();
                let line = format!(
                    "{id}: {:?} term:{} vote:{} lead:{} commit:{}",
                    st.role, st.term, st.vote, st.leader_id, st.commit
                );
                let _ = writeln!(env.out, "{line}");
            }
        }
        "applied" => {
            for id in ids(args) {
                let n = &env.nodes[&id];
                let data: Vec<String> = n
                    .applied_data
                    .iter()
                    .map(|(i, d)| format!("{i}:{}", String::from_utf8_lossy(d)))
                    .collect();
                let line = format!("{id}: sm_index:{} data:[{}]", n.sm.index, data.join(" "));
                let _ = writeln!(env.out, "{line}");
            }
        }
        "reads" => {
            for id in ids(args) {
                let reads: Vec<String> = env.nodes[&id]
                    .reads
                    .iter()
                    .map(|r| format!("{}@{}", String::from_utf8_lossy(&r.context), r.index))
                    .collect();
                let _ = writeln!(env.out, "{id}: [{}]", reads.join(" "));
            }
        }
        other => panic!("unknown command {other}"),
    }
    if env.out.is_empty() {
        env.out.push_str("ok\n");
    }
    env.out.clone()
}

fn run_file(path: &Path) {
    let text = std::fs::read_to_string(path).expect("read testdata");
    let rewrite = std::env::var("KEEL_REWRITE").is_ok_and(|v| v == "1");
    let mut env = Env::new();
    let mut rewritten = String::new();
    let mut failures = Vec::new();
    let lines: Vec<&str> = text.lines().collect();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        if line.trim().is_empty() || line.starts_with('#') {
            rewritten.push_str(line);
            rewritten.push('\n');
            i += 1;
            continue;
        }
        let command = line;
        i += 1;
        let mut expected = String::new();
        if i < lines.len() && lines[i] == "----" {
            i += 1;
            while i < lines.len() && !lines[i].is_empty() {
                expected.push_str(lines[i]);
                expected.push('\n');
                i += 1;
            }
        }
        let actual = run_command(&mut env, command);
        if actual != expected {
            failures.push(format!(
                "{}: `{command}`\n--- expected\n{expected}--- actual\n{actual}",
                path.display()
            ));
        }
        let _ = write!(rewritten, "{command}\n----\n{actual}");
    }
    if rewrite {
        std::fs::write(path, rewritten).expect("rewrite testdata");
        return;
    }
    assert!(
        failures.is_empty(),
        "{}\n(set KEEL_REWRITE=1 to regenerate)",
        failures.join("\n")
    );
}

#[test]
fn interaction_scripts() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("testdata");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("testdata dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "txt"))
        .collect();
    files.sort();
    assert!(!files.is_empty());
    for f in files {
        run_file(&f);
    }
}
