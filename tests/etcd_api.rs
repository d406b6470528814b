//! The etcd v3 API through real etcd clients, against three real `keel server` processes on
//! 127.0.0.1 (free ports, temporary data directories), with one group (etcd's semantics)
//! and with several groups:
//!
//! - the real `etcdctl` (Debian package `etcd-client`, `ETCDCTL_API=3`): `put`, `get`
//!   (`--prefix`, `--limit`, `--sort-by`, `-w json`, `--rev` at an older revision), `del`,
//!   `txn` from stdin, `compaction` (then `get --rev` at the old revision fails on every
//!   member), `endpoint status` and `endpoint health` with `--cluster`, `member list`,
//!   `snapshot save` (a Keel backup file, decoded and checked), and `keel snapshot restore`
//!   of that file into a new three-member cluster and a new one-member cluster with another
//!   group count, which serve the same keys; a missing `etcdctl` fails the test, naming the
//!   package;
//! - Keel's generated tonic client (keel-etcd-proto) over tonic's channel: the same requests
//!   and bad input — an oversized value, too many txn operations, malformed protobuf in a
//!   gRPC frame, unknown fields, a txn spanning groups, leases, a service Keel does not serve, a snapshot stream that is never read; `Compact` and reads at the
//!   compacted revision (also through the native client); nested txns and compares over key
//!   ranges (etcdctl cannot express a nested txn);
//! - `keel snapshot restore` on bad input: damaged, truncated or missing backups, a name not
//!   in the cluster, a data directory in use — refused, with nothing left behind.
//!
//! Requests go to members that do not lead the key's group too: they must forward them.
//! The tests take turns (one cluster at a time) and stop their members with SIGTERM.

use std::fs::File;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use keel_client::{Client, ClientOptions, group_of};
use keel_etcd_proto::etcdserverpb::cluster_client::ClusterClient;
use keel_etcd_proto::etcdserverpb::kv_client::KvClient;
use keel_etcd_proto::etcdserverpb::maintenance_client::MaintenanceClient;
use keel_etcd_proto::etcdserverpb::{
    AlarmRequest, CompactionRequest, Compare, DeleteRangeRequest, MemberListRequest, PutRequest,
    PutResponse, RangeRequest, RequestOp, SnapshotRequest, StatusRequest, TxnRequest, compare,
    range_request, request_op, response_op,
};
use prost::Message;
use tonic::transport::Channel;
use tonic::{Code, Status};

mod common;
use common::{free_ports, run_with_stdin, runtime, serial};

const READY_TIMEOUT: Duration = Duration::from_secs(30);
const MEMBERS: usize = 3;

struct Member {
    name: String,
    client_address: String,
    err_path: PathBuf,
    child: Option<Child>,
}

/// Members (three unless restored otherwise), killed when dropped.
struct Cluster {
    _dir: tempfile::TempDir,
    groups: u32,
    members: Vec<Member>,
}

/// A cluster restored from a backup with `keel snapshot restore` before it starts.
struct Restore<'a> {
    backup: &'a std::path::Path,
    members: usize,
    token: &'a str,
}

const SHARDS: u16 = 2;

impl Cluster {
    fn start(groups: u32) -> Cluster {
        Cluster::start_with(groups, None, &[])
    }

    /// `groups` groups (restored from a backup first, or new), each member started with
    /// the `extra` flags too.
    fn start_with(groups: u32, restore: Option<Restore<'_>>, extra: &[&str]) -> Cluster {
        let count = restore.as_ref().map_or(MEMBERS, |r| r.members);
        let dir = tempfile::Builder::new()
            .prefix("keel-etcd-test-")
            .tempdir()
            .unwrap();
        let mut held = Vec::new();
        let peers: Vec<u16> = (0..count).map(|_| free_ports(SHARDS, &mut held)).collect();
        let clients: Vec<u16> = (0..count).map(|_| free_ports(1, &mut held)).collect();
        let initial_cluster = (0..count)
            .map(|i| format!("m{}=http://127.0.0.1:{}", i + 1, peers[i]))
            .collect::<Vec<_>>()
            .join(",");
        drop(held);
        let token = restore.as_ref().map_or("", |r| r.token);
        let (groups_flag, shards_flag) = (groups.to_string(), SHARDS.to_string());
        // What a restore and a member's start are both given.
        let cluster_flags = [
            "--initial-cluster-token",
            token,
            "--groups",
            &groups_flag,
            "--shards",
            &shards_flag,
        ];
        let mut members = Vec::new();
        for i in 0..count {
            let name = format!("m{}", i + 1);
            let data_dir = dir.path().join(&name).display().to_string();
            if let Some(r) = &restore {
                // Once per member, as etcdutl snapshot restore.
                let out = Command::new(env!("CARGO_BIN_EXE_keel"))
                    .args([
                        "snapshot",
                        "restore",
                        &r.backup.display().to_string(),
                        "--data-dir",
                        &data_dir,
                        "--name",
                        &name,
                        "--initial-cluster",
                        &initial_cluster,
                    ])
                    .args(cluster_flags)
                    .output()
                    .unwrap();
                assert!(
                    out.status.success(),
                    "keel snapshot restore failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                let said = String::from_utf8_lossy(&out.stdout);
                assert!(said.contains(&format!("restored member {name}")), "{said}");
            }
            members.push(spawn_member(
                dir.path(),
                &name,
                peers[i],
                clients[i],
                &initial_cluster,
                &[&cluster_flags[..], extra].concat(),
            ));
        }
        Cluster {
            _dir: dir,
            groups,
            members,
        }
    }

    fn endpoint(&self, i: usize) -> &str {
        &self.members[i].client_address
    }

    fn stderr_tails(&self) -> String {
        let mut out = String::new();
        for m in &self.members {
            let text = std::fs::read_to_string(&m.err_path).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            out.push_str(&format!("\n--- {} stderr:", m.name));
            for line in &lines[lines.len().saturating_sub(20)..] {
                out.push_str("\n  ");
                out.push_str(line);
            }
        }
        out
    }

    /// Waits until every group has its preferred leader (so that leadership no longer
    /// moves) and every member lists every member's client address.
    async fn wait_ready(&mut self) {
        let started = Instant::now();
        let endpoints: Vec<String> = self
            .members
            .iter()
            .map(|m| m.client_address.clone())
            .collect();
        let endpoints: Vec<&str> = endpoints.iter().map(String::as_str).collect();
        let options = ClientOptions {
            connect_timeout: Duration::from_millis(500),
            request_timeout: Duration::from_secs(1),
            attempts_max: 1,
            ..ClientOptions::default()
        };
        loop {
            for m in &mut self.members {
                if let Some(status) = m.child.as_mut().and_then(|c| c.try_wait().unwrap()) {
                    panic!("{} exited with {status}", m.name);
                }
            }
            let mut last = String::new();
            let mut ready = true;
            for endpoint in &endpoints {
                let status = match Client::connect_with(&[endpoint], options.clone()).await {
                    Ok(client) => client.status().await.map_err(|e| e.to_string()),
                    Err(e) => Err(e.to_string()),
                };
                match status {
                    Ok(s) => {
                        // Group g's preferred leader is the (g mod n)-th member by id.
                        let n = u64::try_from(endpoints.len()).unwrap();
                        let balanced = s
                            .leaders
                            .iter()
                            .zip(0u64..)
                            .all(|(l, g)| *l == Some(g % n + 1));
                        if !balanced || s.members.len() != endpoints.len() {
                            ready = false;
                            last = format!("leaders {:?}, members {:?}", s.leaders, s.members);
                        }
                    }
                    Err(e) => {
                        ready = false;
                        last = e;
                    }
                }
            }
            if ready {
                return;
            }
            assert!(
                started.elapsed() < READY_TIMEOUT,
                "not ready within {READY_TIMEOUT:?}: {last}{}",
                self.stderr_tails()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// SIGTERM to every member; each must exit 0.
    fn terminate_all(&mut self) {
        for i in 0..self.members.len() {
            self.terminate(i);
        }
    }

    /// SIGTERM to member `i`, which must exit 0.
    fn terminate(&mut self, i: usize) {
        {
            let m = &mut self.members[i];
            let Some(mut child) = m.child.take() else {
                return;
            };
            let pid = libc::pid_t::try_from(child.id()).unwrap();
            // SAFETY: kill(2) touches no memory of ours; the child is not reaped yet, so its
            // pid cannot have been reused.
            assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
            let deadline = Instant::now() + Duration::from_secs(20);
            let status = loop {
                if let Some(status) = child.try_wait().unwrap() {
                    break status;
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("{} still running 20 s after SIGTERM", m.name);
                }
                std::thread::sleep(Duration::from_millis(20));
            };
            assert!(status.success(), "{} exited with {status}", m.name);
        }
    }
}

/// Starts `keel server` as member `name` with its data directory and stderr file in `dir`,
/// listening on `peer` and `client`, with `extra` flags.
fn spawn_member(
    dir: &std::path::Path,
    name: &str,
    peer: u16,
    client: u16,
    initial_cluster: &str,
    extra: &[&str],
) -> Member {
    let data_dir = dir.join(name).display().to_string();
    let err_path = dir.join(format!("{name}.err"));
    let child = Command::new(env!("CARGO_BIN_EXE_keel"))
        .args([
            "server",
            "--name",
            name,
            "--data-dir",
            &data_dir,
            "--listen-peer-urls",
            &format!("http://127.0.0.1:{peer}"),
            "--listen-client-urls",
            &format!("http://127.0.0.1:{client}"),
            "--initial-cluster",
            initial_cluster,
        ])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(File::create(&err_path).unwrap())
        .spawn()
        .unwrap();
    Member {
        name: name.to_string(),
        client_address: format!("127.0.0.1:{client}"),
        err_path,
        child: Some(child),
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for m in &mut self.members {
            if let Some(mut child) = m.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// Two keys of different groups (several groups only).
fn keys_in_two_groups(groups: u32) -> (String, String) {
    let first = "{a}k".to_string();
    let other = (0..)
        .map(|i| format!("{{b{i}}}k"))
        .find(|k| group_of(k.as_bytes(), groups) != group_of(first.as_bytes(), groups))
        .unwrap();
    (first, other)
}

// ---- etcdctl ------------------------------------------------------------------------------

/// The `etcdctl` binary; fails the test when it is missing rather than skip it.
fn etcdctl_path() -> PathBuf {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("etcdctl"))
            .find(|p| p.is_file())
    });
    found.unwrap_or_else(|| {
        panic!(
            "etcdctl not found on PATH: install the Debian package etcd-client \
             (apt-get install etcd-client); .ci/run installs it"
        )
    })
}

/// Runs etcdctl against `endpoint` (which may not lead the group of the keys) with `input`
/// on its stdin.
fn ctl(cluster: &Cluster, endpoint: usize, args: &[&str], input: &str) -> Output {
    run_with_stdin(
        Command::new(etcdctl_path())
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", cluster.endpoint(endpoint)))
            .arg("--command-timeout=10s")
            .args(args),
        input,
    )
}

/// Runs etcdctl and returns its stdout, failing the test (with everything) if it failed.
fn ctl_ok(cluster: &Cluster, endpoint: usize, args: &[&str], input: &str) -> String {
    let out = ctl(cluster, endpoint, args, input);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "etcdctl {args:?} failed: {}\nstdout: {stdout}\nstderr: {}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        cluster.stderr_tails()
    );
    stdout
}

/// Runs etcdctl, which must fail; returns its stderr.
fn ctl_err(cluster: &Cluster, endpoint: usize, args: &[&str], input: &str) -> String {
    let out = ctl(cluster, endpoint, args, input);
    assert!(
        !out.status.success(),
        "etcdctl {args:?} succeeded: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The number after `"field":` in etcdctl's JSON output.
fn json_number(json: &str, field: &str) -> i64 {
    let at = json
        .find(&format!("\"{field}\":"))
        .unwrap_or_else(|| panic!("no {field} in {json}"));
    let rest = &json[at + field.len() + 3..];
    let digits: String = rest
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '-')
        .collect();
    digits
        .parse()
        .unwrap_or_else(|_| panic!("{field} is not a number in {json}"))
}

/// The unsigned number after `"field":` in etcdctl's JSON output (ids use all 64 bits).
fn json_u64(json: &str, field: &str) -> u64 {
    let at = json
        .find(&format!("\"{field}\":"))
        .unwrap_or_else(|| panic!("no {field} in {json}"));
    let digits: String = json[at + field.len() + 3..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits
        .parse()
        .unwrap_or_else(|_| panic!("{field} is not a number in {json}"))
}

fn etcdctl_scenario(groups: u32) {
    let _turn = serial();
    etcdctl_path();
    let mut cluster = Cluster::start(groups);
    runtime().block_on(cluster.wait_ready());

    // Puts through every member: most of them do not lead the key's group and forward.
    for (i, (k, v)) in [
        ("fruit/apple", "red"),
        ("fruit/banana", "yellow"),
        ("fruit/cherry", "dark-red"),
        ("veg/kale", "green"),
    ]
    .iter()
    .enumerate()
    {
        assert_eq!(ctl_ok(&cluster, i % MEMBERS, &["put", k, v], ""), "OK\n");
    }
    assert_eq!(
        ctl_ok(&cluster, 1, &["get", "--prefix", "fruit/"], ""),
        "fruit/apple\nred\nfruit/banana\nyellow\nfruit/cherry\ndark-red\n"
    );
    assert_eq!(
        ctl_ok(
            &cluster,
            2,
            &["get", "--prefix", "fruit/", "--limit", "2"],
            ""
        ),
        "fruit/apple\nred\nfruit/banana\nyellow\n"
    );
    assert_eq!(
        ctl_ok(
            &cluster,
            0,
            &[
                "get",
                "--prefix",
                "fruit/",
                "--sort-by=VALUE",
                "--order=DESCEND"
            ],
            ""
        ),
        "fruit/banana\nyellow\nfruit/apple\nred\nfruit/cherry\ndark-red\n"
    );
    assert_eq!(
        ctl_ok(
            &cluster,
            0,
            &["get", "--prefix", "fruit/", "--keys-only"],
            ""
        ),
        "fruit/apple\n\nfruit/banana\n\nfruit/cherry\n\n"
    );
    // Every key, and none of the cluster's reserved metadata.
    assert_eq!(
        ctl_ok(&cluster, 1, &["get", "", "--from-key", "--keys-only"], ""),
        "fruit/apple\n\nfruit/banana\n\nfruit/cherry\n\nveg/kale\n\n"
    );

    // -w json, and a read at the revision it names.
    let json = ctl_ok(&cluster, 2, &["get", "fruit/apple", "-w", "json"], "");
    assert!(json.contains("\"key\":\"ZnJ1aXQvYXBwbGU=\""), "{json}");
    assert!(json.contains("\"value\":\"cmVk\""), "{json}");
    assert_eq!(json_number(&json, "count"), 1);
    let revision = json_number(&json, "revision");
    assert!(revision >= 1, "{json}");
    // An older revision is read from the history.
    assert_eq!(
        ctl_ok(&cluster, 0, &["put", "fruit/apple", "crimson"], ""),
        "OK\n"
    );
    let rev = format!("--rev={revision}");
    assert_eq!(
        ctl_ok(&cluster, 1, &["get", "fruit/apple", &rev], ""),
        "fruit/apple\nred\n"
    );
    assert_eq!(
        ctl_ok(&cluster, 2, &["get", "fruit/apple"], ""),
        "fruit/apple\ncrimson\n"
    );
    let future = format!("--rev={}", revision + 1000);
    let err = ctl_err(&cluster, 1, &["get", "fruit/apple", &future], "");
    assert!(
        err.contains("required revision is a future revision"),
        "{err}"
    );
    if groups > 1 {
        // Revisions belong to groups: a range at a revision cannot span them.
        let err = ctl_err(&cluster, 1, &["get", "--prefix", "fruit/", &rev], "");
        assert!(err.contains("cannot span"), "{err}");
    }
    // compaction at the key's latest revision: the older one is gone on every member
    // (each applied the compaction from its group's log), the latest still reads.
    let json = ctl_ok(&cluster, 0, &["get", "fruit/apple", "-w", "json"], "");
    let latest = json_number(&json, "revision").to_string();
    assert_eq!(
        ctl_ok(&cluster, 2, &["compaction", "--physical", &latest], ""),
        format!("compacted revision {latest}\n")
    );
    for i in 0..MEMBERS {
        let err = ctl_err(&cluster, i, &["get", "fruit/apple", &rev], "");
        assert!(
            err.contains("required revision has been compacted"),
            "{err}"
        );
        let now = format!("--rev={latest}");
        assert_eq!(
            ctl_ok(&cluster, i, &["get", "fruit/apple", &now], ""),
            "fruit/apple\ncrimson\n"
        );
    }
    let err = ctl_err(&cluster, 1, &["compaction", &latest], "");
    assert!(
        err.contains("required revision has been compacted"),
        "{err}"
    );
    let err = ctl_err(
        &cluster,
        0,
        &["compaction", &(revision + 1000).to_string()],
        "",
    );
    assert!(
        err.contains("required revision is a future revision"),
        "{err}"
    );

    // del.
    assert_eq!(ctl_ok(&cluster, 1, &["del", "fruit/cherry"], ""), "1\n");
    assert_eq!(ctl_ok(&cluster, 0, &["get", "fruit/cherry"], ""), "");
    assert_eq!(ctl_ok(&cluster, 2, &["del", "fruit/none"], ""), "0\n");

    // txn from stdin: compares, then success ops, then failure ops, separated by blank
    // lines. The keys share a hash tag, so one group holds them all.
    ctl_ok(&cluster, 0, &["put", "{acct}x", "1"], "");
    let script =
        "value(\"{acct}x\") = \"1\"\n\nput {acct}x 2\nput {acct}y 1\n\nput {acct}x failed\n\n";
    assert_eq!(
        ctl_ok(&cluster, 1, &["txn"], script),
        "SUCCESS\n\nOK\n\nOK\n"
    );
    assert_eq!(ctl_ok(&cluster, 2, &["get", "{acct}x"], ""), "{acct}x\n2\n");
    assert_eq!(ctl_ok(&cluster, 1, &["txn"], script), "FAILURE\n\nOK\n");
    assert_eq!(
        ctl_ok(&cluster, 0, &["get", "{acct}x", "--print-value-only"], ""),
        "failed\n"
    );
    let script = "version(\"{acct}y\") = \"1\"\n\nget {acct}y\n\n\n";
    assert_eq!(
        ctl_ok(&cluster, 2, &["txn"], script),
        "SUCCESS\n\n{acct}y\n1\n"
    );
    if groups > 1 {
        let (a, b) = keys_in_two_groups(groups);
        let script = format!("\nput {a} 1\nput {b} 1\n\n\n");
        let err = ctl_err(&cluster, 0, &["txn"], &script);
        assert!(
            err.contains("FailedPrecondition") && err.contains("span groups"),
            "{err}"
        );
    }

    // Cluster-wide commands.
    let status = ctl_ok(
        &cluster,
        0,
        &["endpoint", "status", "--cluster", "-w", "json"],
        "",
    );
    for i in 0..MEMBERS {
        assert!(status.contains(cluster.endpoint(i)), "{status}");
    }
    assert_eq!(
        status.matches("\"version\":\"3.5.0\"").count(),
        MEMBERS,
        "{status}"
    );
    assert!(json_number(&status, "dbSize") > 0, "{status}");
    assert!(json_number(&status, "leader") > 0, "{status}");
    assert!(json_number(&status, "raft_term") > 0, "{status}");
    // etcdctl 3.4 prints health to stderr (3.5 to stdout): read both.
    let health = ctl(&cluster, 1, &["endpoint", "health", "--cluster"], "");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&health.stdout),
        String::from_utf8_lossy(&health.stderr)
    );
    assert!(health.status.success(), "{text}");
    assert_eq!(text.matches("is healthy").count(), MEMBERS, "{text}");
    let list = ctl_ok(&cluster, 2, &["member", "list"], "");
    assert_eq!(list.lines().count(), MEMBERS, "{list}");
    for (i, m) in cluster.members.iter().enumerate() {
        let line = list
            .lines()
            .find(|l| l.contains(&format!(", {}, ", m.name)))
            .unwrap_or_else(|| panic!("{} not listed: {list}", m.name));
        assert!(line.contains(cluster.endpoint(i)), "{line}");
        assert!(line.starts_with(&format!("{}, started", i + 1)), "{line}");
    }

    // snapshot save: a Keel backup of every group, which decodes and holds the keys.
    let file = cluster._dir.path().join("backup.db");
    let saved = ctl_ok(
        &cluster,
        1,
        &["snapshot", "save", &file.display().to_string()],
        "",
    );
    assert!(saved.contains("Snapshot saved"), "{saved}");
    let backup = keel_node::server::etcd::backup::decode(&std::fs::read(&file).unwrap()).unwrap();
    assert_eq!(backup.groups.len(), usize::try_from(groups).unwrap());
    let mut saved_keys: Vec<String> = backup
        .groups
        .iter()
        .flat_map(|g| {
            g.kvs
                .iter()
                .map(|kv| String::from_utf8_lossy(&kv.key).into_owned())
        })
        .collect();
    saved_keys.sort();
    assert_eq!(
        saved_keys,
        [
            "fruit/apple",
            "fruit/banana",
            "veg/kale",
            "{acct}x",
            "{acct}y"
        ]
    );
    let everything = ["get", "", "--from-key"];
    let saved = ctl_ok(&cluster, 0, &everything, "");
    let file_dir = tempfile::tempdir().unwrap();
    let backup_file = file_dir.path().join("backup.db");
    std::fs::copy(&file, &backup_file).unwrap();

    // Membership: a learner added (never started here: its peer port has no listener),
    // listed unstarted, refused promotion, removed; the errors are etcd's.
    let peer = "http://127.0.0.1:9";
    let added = ctl_ok(
        &cluster,
        1,
        &[
            "member",
            "add",
            "m4",
            &format!("--peer-urls={peer}"),
            "--learner",
        ],
        "",
    );
    assert!(added.contains("added to cluster"), "{added}");
    let list = members_listed(&cluster, 2, MEMBERS + 1);
    let line = list
        .lines()
        .find(|l| l.contains(peer))
        .unwrap_or_else(|| panic!("m4 not listed: {list}"));
    assert!(line.starts_with("4, unstarted"), "{line}");
    assert!(line.ends_with("true"), "listed as a learner: {line}");
    let again = ctl_err(
        &cluster,
        0,
        &["member", "add", "m5", &format!("--peer-urls={peer}")],
        "",
    );
    assert!(again.contains("peerURL exists"), "{again}");
    let promote = ctl_err(&cluster, 0, &["member", "promote", "4"], "");
    assert!(promote.contains("in sync with leader"), "{promote}");
    let removed = ctl_ok(&cluster, 0, &["member", "remove", "4"], "");
    assert!(removed.contains("removed from cluster"), "{removed}");
    let gone = ctl_err(&cluster, 2, &["member", "remove", "4"], "");
    assert!(gone.contains("member not found"), "{gone}");
    members_listed(&cluster, 1, MEMBERS);
    // Writes still commit in every group.
    assert_eq!(
        ctl_ok(&cluster, 2, &["put", "after/members", "x"], ""),
        "OK\n"
    );
    // With m3 down, removing m1 would leave m2 alone of {m2, m3} started: refused. (The
    // leader of group 0 notices m3's silence within an election timeout and two looks.)
    cluster.terminate(2);
    std::thread::sleep(Duration::from_secs(3));
    let refused = ctl_err(&cluster, 0, &["member", "remove", "1"], "");
    assert!(refused.contains("not enough started members"), "{refused}");
    members_listed(&cluster, 1, MEMBERS);
    cluster.terminate_all();
    drop(cluster);

    // keel snapshot restore into three new members (the backup's group count), then into
    // one member with another group count: each serves the same keys and takes writes.
    for (members, restored_groups) in [(MEMBERS, groups), (1, groups % 3 + 2)] {
        let mut restored = Cluster::start_with(
            restored_groups,
            Some(Restore {
                backup: &backup_file,
                members,
                token: "restored",
            }),
            &[],
        );
        runtime().block_on(restored.wait_ready());
        for i in 0..members {
            assert_eq!(ctl_ok(&restored, i, &everything, ""), saved, "member {i}");
        }
        // Keys keep their revisions, and the store's revision goes on from the backup's
        // (the members' own metadata, written at start, moves it further).
        let json = ctl_ok(&restored, 0, &["get", "fruit/apple", "-w", "json"], "");
        let apple = backup
            .groups
            .iter()
            .flat_map(|g| &g.kvs)
            .find(|kv| kv.key == b"fruit/apple")
            .unwrap();
        assert_eq!(
            u64::try_from(json_number(&json, "mod_revision")).unwrap(),
            apple.meta.mod_revision,
            "{json}"
        );
        if restored_groups == groups {
            let group = usize::try_from(group_of(b"fruit/apple", groups)).unwrap();
            assert!(
                u64::try_from(json_number(&json, "revision")).unwrap()
                    >= backup.groups[group].revision,
                "{json}"
            );
        }
        assert_eq!(
            ctl_ok(&restored, members - 1, &["put", "fruit/date", "brown"], ""),
            "OK\n"
        );
        assert_eq!(
            ctl_ok(
                &restored,
                0,
                &["get", "fruit/date", "--print-value-only"],
                ""
            ),
            "brown\n"
        );
        let status = ctl_ok(&restored, 0, &["endpoint", "status", "-w", "json"], "");
        assert_ne!(
            json_u64(&status, "cluster_id"),
            backup.cluster_id,
            "{status}"
        );
        restored.terminate_all();
    }
}

#[test]
fn etcdctl_with_one_group() {
    etcdctl_scenario(1);
}

#[test]
fn etcdctl_with_four_groups() {
    etcdctl_scenario(4);
}

// ---- the generated tonic client ------------------------------------------------------------

async fn channel(cluster: &Cluster, i: usize) -> Channel {
    Channel::from_shared(format!("http://{}", cluster.endpoint(i)))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

fn put(key: &str, value: &[u8]) -> PutRequest {
    PutRequest {
        key: key.into(),
        value: value.to_vec(),
        ..PutRequest::default()
    }
}

fn put_op(key: &str, value: &str) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestPut(put(key, value.as_bytes()))),
    }
}

fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    *end.last_mut().unwrap() += 1;
    end
}

fn keys(kvs: &[keel_etcd_proto::mvccpb::KeyValue]) -> Vec<String> {
    kvs.iter()
        .map(|kv| String::from_utf8_lossy(&kv.key).into_owned())
        .collect()
}

/// `etcdctl member list` on `endpoint` once it lists `count` members (a member lists its
/// own replica of the list, which applies a change a moment after the leader did).
fn members_listed(cluster: &Cluster, endpoint: usize, count: usize) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let list = ctl_ok(cluster, endpoint, &["member", "list"], "");
        if list.lines().count() == count {
            return list;
        }
        assert!(Instant::now() < deadline, "never {count} members: {list}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn assert_status(result: Result<impl std::fmt::Debug, Status>, code: Code, says: &str) {
    match result {
        Ok(r) => panic!("expected {code:?} ({says}), got {r:?}"),
        Err(s) => {
            assert_eq!(s.code(), code, "{s:?}");
            assert!(
                s.message().contains(says),
                "{:?} does not say {says:?}",
                s.message()
            );
        }
    }
}

/// A codec that sends raw bytes as the request message and decodes a `RangeResponse`: for
/// malformed and unknown input.
#[derive(Default)]
struct RawCodec;

struct RawEncoder;
struct RawDecoder;

impl tonic::codec::Encoder for RawEncoder {
    type Item = Vec<u8>;
    type Error = Status;
    fn encode(
        &mut self,
        item: Vec<u8>,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), Status> {
        use bytes::BufMut;
        dst.put_slice(&item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawDecoder {
    type Item = keel_etcd_proto::etcdserverpb::RangeResponse;
    type Error = Status;
    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<Self::Item>, Status> {
        Message::decode(src)
            .map(Some)
            .map_err(|e| Status::internal(e.to_string()))
    }
}

impl tonic::codec::Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = keel_etcd_proto::etcdserverpb::RangeResponse;
    type Encoder = RawEncoder;
    type Decoder = RawDecoder;
    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }
    fn decoder(&mut self) -> RawDecoder {
        RawDecoder
    }
}

async fn raw_call(
    channel: Channel,
    path: &'static str,
    bytes: Vec<u8>,
) -> Result<keel_etcd_proto::etcdserverpb::RangeResponse, Status> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready()
        .await
        .map_err(|e| Status::unknown(e.to_string()))?;
    grpc.unary(
        tonic::Request::new(bytes),
        http::uri::PathAndQuery::from_static(path),
        RawCodec,
    )
    .await
    .map(tonic::Response::into_inner)
}

async fn grpc_scenario_on(cluster: &Cluster) {
    let groups = cluster.groups;
    let mut kv = KvClient::new(channel(cluster, 1).await);
    let mut kv0 = KvClient::new(channel(cluster, 0).await);

    // Puts, with prev_kv.
    for (k, v) in [
        ("p/a", "1"),
        ("p/b", "2"),
        ("p/c", "3"),
        ("p/d", "4"),
        ("q/x", "9"),
    ] {
        kv.put(put(k, v.as_bytes())).await.unwrap();
    }
    let again = kv
        .put(PutRequest {
            prev_kv: true,
            ..put("p/a", b"10")
        })
        .await
        .unwrap()
        .into_inner();
    let prev = again.prev_kv.expect("prev_kv asked");
    assert_eq!((prev.value.as_slice(), prev.version), (&b"1"[..], 1));
    let header = again.header.unwrap();
    assert!(header.revision > 0 && header.cluster_id != 0);
    // The member asked answers, whether or not it led the key's group (m2 is member 2).
    assert_eq!(header.member_id, 2);

    // Ranges: prefix, limit, sort, count_only, keys_only, serializable, revision filters.
    let prefix = RangeRequest {
        key: b"p/".to_vec(),
        range_end: prefix_end("p/"),
        ..RangeRequest::default()
    };
    let all = kv.range(prefix.clone()).await.unwrap().into_inner();
    assert_eq!(keys(&all.kvs), ["p/a", "p/b", "p/c", "p/d"]);
    assert_eq!((all.count, all.more), (4, false));
    let limited = kv
        .range(RangeRequest {
            limit: 2,
            ..prefix.clone()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(keys(&limited.kvs), ["p/a", "p/b"]);
    assert_eq!((limited.count, limited.more), (4, true));
    let by_value = kv
        .range(RangeRequest {
            sort_order: range_request::SortOrder::Descend.into(),
            sort_target: range_request::SortTarget::Value.into(),
            limit: 3,
            ..prefix.clone()
        })
        .await
        .unwrap()
        .into_inner();
    // Values "10", "2", "3", "4" in byte order, largest first.
    assert_eq!(keys(&by_value.kvs), ["p/d", "p/c", "p/b"]);
    let counted = kv0
        .range(RangeRequest {
            count_only: true,
            serializable: true,
            ..prefix.clone()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(counted.kvs.is_empty());
    assert_eq!(counted.count, 4);
    let keys_only = kv
        .range(RangeRequest {
            keys_only: true,
            ..prefix.clone()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(keys_only.kvs.iter().all(|kv| kv.value.is_empty()));
    let newest = all.kvs.iter().map(|kv| kv.mod_revision).max().unwrap();
    let filtered = kv
        .range(RangeRequest {
            min_mod_revision: newest,
            ..prefix.clone()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(filtered.kvs.iter().all(|kv| kv.mod_revision >= newest));
    assert!(!filtered.kvs.is_empty());
    let everything = kv
        .range(RangeRequest {
            key: vec![0],
            range_end: vec![0],
            keys_only: true,
            ..RangeRequest::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(keys(&everything.kvs), ["p/a", "p/b", "p/c", "p/d", "q/x"]);

    // A read at the current revision of the key's group, at an older one (from the
    // history), and at a future one.
    let one = RangeRequest {
        key: b"q/x".to_vec(),
        ..RangeRequest::default()
    };
    let now = kv
        .range(one.clone())
        .await
        .unwrap()
        .into_inner()
        .header
        .unwrap()
        .revision;
    kv.put(put("q/x", b"10")).await.unwrap();
    let at = kv
        .range(RangeRequest {
            revision: now,
            ..one.clone()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(keys(&at.kvs), ["q/x"]);
    assert_eq!(at.kvs[0].value, b"9");
    assert!(at.header.unwrap().revision > now);
    assert_status(
        kv.range(RangeRequest {
            revision: now + 100,
            ..one.clone()
        })
        .await,
        Code::OutOfRange,
        "required revision is a future revision",
    );
    if groups > 1 {
        assert_status(
            kv.range(RangeRequest {
                revision: now,
                ..prefix.clone()
            })
            .await,
            Code::InvalidArgument,
            "cannot span",
        );
    }

    // Delete with prev_kv.
    let deleted = kv
        .delete_range(DeleteRangeRequest {
            key: b"q/x".to_vec(),
            prev_kv: true,
            ..DeleteRangeRequest::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(deleted.deleted, 1);
    assert_eq!(deleted.prev_kvs[0].value, b"10");

    // Txn: compares on value, version, create and mod revision; a range inside.
    kv.put(put("{t}a", b"1")).await.unwrap();
    let a = kv
        .range(RangeRequest {
            key: b"{t}a".to_vec(),
            ..RangeRequest::default()
        })
        .await
        .unwrap()
        .into_inner()
        .kvs
        .remove(0);
    let cmp = |target: compare::CompareTarget, union: compare::TargetUnion| Compare {
        result: compare::CompareResult::Equal.into(),
        target: target.into(),
        key: b"{t}a".to_vec(),
        target_union: Some(union),
        range_end: Vec::new(),
    };
    let txn = TxnRequest {
        compare: vec![
            cmp(
                compare::CompareTarget::Value,
                compare::TargetUnion::Value(b"1".to_vec()),
            ),
            cmp(
                compare::CompareTarget::Version,
                compare::TargetUnion::Version(1),
            ),
            cmp(
                compare::CompareTarget::Create,
                compare::TargetUnion::CreateRevision(a.create_revision),
            ),
            cmp(
                compare::CompareTarget::Mod,
                compare::TargetUnion::ModRevision(a.mod_revision),
            ),
        ],
        success: vec![
            put_op("{t}a", "2"),
            put_op("{t}b", "1"),
            RequestOp {
                request: Some(request_op::Request::RequestRange(RangeRequest {
                    key: b"{t}".to_vec(),
                    range_end: prefix_end("{t}"),
                    ..RangeRequest::default()
                })),
            },
        ],
        failure: vec![put_op("{t}a", "failed")],
    };
    let done = kv.txn(txn.clone()).await.unwrap().into_inner();
    assert!(done.succeeded);
    assert_eq!(done.responses.len(), 3);
    match &done.responses[2].response {
        Some(response_op::Response::ResponseRange(r)) => {
            assert_eq!(keys(&r.kvs), ["{t}a", "{t}b"]);
            assert_eq!(r.kvs[0].value, b"2");
        }
        other => panic!("expected a range response, got {other:?}"),
    }
    let failed = kv0.txn(txn.clone()).await.unwrap().into_inner();
    assert!(!failed.succeeded);
    assert_eq!(failed.responses.len(), 1);

    // Compact goes through the key's group's log: two revisions of a key, compacted at the
    // second through a member that may not lead the group.
    let revision_of = |r: PutResponse| r.header.unwrap().revision;
    let first = revision_of(kv.put(put("{c}k", b"old")).await.unwrap().into_inner());
    let second = revision_of(kv0.put(put("{c}k", b"new")).await.unwrap().into_inner());
    let at = |revision: i64, serializable: bool| RangeRequest {
        key: b"{c}k".to_vec(),
        revision,
        serializable,
        ..RangeRequest::default()
    };
    let old = kv.range(at(first, false)).await.unwrap().into_inner();
    assert_eq!(old.kvs[0].value, b"old");
    let compaction = |revision: i64| CompactionRequest {
        revision,
        physical: true,
    };
    let done = kv.compact(compaction(second)).await.unwrap().into_inner();
    assert!(done.header.unwrap().revision >= second);
    assert_status(
        kv0.range(at(first, false)).await,
        Code::OutOfRange,
        "required revision has been compacted",
    );
    // Every replica applied it (serializable reads are answered by the member asked).
    for i in 0..MEMBERS {
        let mut member = KvClient::new(channel(cluster, i).await);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match member.range(at(first, true)).await {
                Err(status) if status.code() == Code::OutOfRange => {
                    assert!(status.message().contains("compacted"), "{status:?}");
                    break;
                }
                other => assert!(
                    Instant::now() < deadline,
                    "member {i} still reads the compacted revision: {other:?}"
                ),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let kept = member.range(at(second, true)).await.unwrap().into_inner();
        assert_eq!(kept.kvs[0].value, b"new", "member {i}");
    }
    // Again at the same revision: etcd's "compacted"; beyond the store: "future".
    assert_status(
        kv0.compact(compaction(second)).await,
        Code::OutOfRange,
        "required revision has been compacted",
    );
    assert_status(
        kv.compact(compaction(i64::MAX)).await,
        Code::OutOfRange,
        "required revision is a future revision",
    );
    // The native protocol reads revisions too, and is told when they are compacted.
    let group = group_of(b"{c}k", groups);
    let native = Client::connect(&[cluster.endpoint(0)]).await.unwrap();
    let native_at = |revision: i64| keel_client::RangeRequest {
        key: b"{c}k".to_vec(),
        revision: u64::try_from(revision).unwrap(),
        ..keel_client::RangeRequest::default()
    };
    let read = native
        .range_in_group(group, native_at(second))
        .await
        .unwrap();
    assert_eq!(read.kvs[0].value, b"new");
    let third = revision_of(kv.put(put("{c}k", b"newest")).await.unwrap().into_inner());
    let read = native
        .range_in_group(group, native_at(second))
        .await
        .unwrap();
    assert_eq!(read.kvs[0].value, b"new");
    assert!(third > second);
    let err = native
        .range_in_group(group, native_at(first))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("compacted"), "{err}");

    // Maintenance and Cluster.
    let mut maintenance = MaintenanceClient::new(channel(cluster, 2).await);
    let status = maintenance
        .status(StatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.version, "3.5.0");
    assert!(status.db_size > 0 && status.db_size_in_use > 0);
    assert!(status.leader > 0 && status.raft_term > 0 && status.raft_index > 0);
    assert!(status.raft_applied_index > 0);
    let alarms = maintenance
        .alarm(AlarmRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(alarms.alarms.is_empty());
    maintenance
        .defragment(keel_etcd_proto::etcdserverpb::DefragmentRequest {})
        .await
        .unwrap();
    // Snapshot: a stream of a Keel backup; and one that is never read costs its client only.
    let mut idle = MaintenanceClient::new(channel(cluster, 0).await);
    let unread = idle
        .snapshot(SnapshotRequest {})
        .await
        .unwrap()
        .into_inner();
    let mut stream = maintenance
        .snapshot(SnapshotRequest {})
        .await
        .unwrap()
        .into_inner();
    let mut file = Vec::new();
    let mut remaining = Vec::new();
    while let Some(message) = stream.message().await.unwrap() {
        file.extend_from_slice(&message.blob);
        remaining.push(message.remaining_bytes);
    }
    assert_eq!(remaining.last(), Some(&0));
    let backup = keel_node::server::etcd::backup::decode(&file).unwrap();
    let saved: usize = backup.groups.iter().map(|g| g.kvs.len()).sum();
    assert!(saved >= 5, "{backup:?}");
    kv.put(put("while-unread", b"ok")).await.unwrap();
    drop(unread);
    // Open streams are bounded per listener (snapshot_streams_max): with two shards, nine
    // unread streams on their own connections put at least five on one listener. A backup
    // of a few MB outlasts the HTTP/2 flow-control windows, so an unread stream stays open.
    for i in 0..4 {
        kv.put(put(&format!("big-{i}"), &vec![b'b'; 1_000_000]))
            .await
            .unwrap();
    }
    let mut open = Vec::new();
    let mut refused = 0;
    for _ in 0..(2 * keel_node::server::etcd::SNAPSHOT_STREAMS_MAX + 1) {
        let mut client = MaintenanceClient::new(channel(cluster, 0).await);
        match client.snapshot(SnapshotRequest {}).await {
            Ok(stream) => open.push(stream.into_inner()),
            Err(status) => {
                assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
                assert!(
                    status.message().contains("snapshot_streams_max"),
                    "{status:?}"
                );
                refused += 1;
            }
        }
    }
    assert!(
        refused >= 1,
        "more unread Snapshot streams than the bound were served"
    );
    drop(open);
    // Streams dropped by their clients free their places.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut client = MaintenanceClient::new(channel(cluster, 0).await);
        if client.snapshot(SnapshotRequest {}).await.is_ok() {
            break;
        }
        assert!(Instant::now() < deadline, "Snapshot streams never freed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut members = ClusterClient::new(channel(cluster, 0).await);
    let list = members
        .member_list(MemberListRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.members.len(), MEMBERS);
    for (i, m) in list.members.iter().enumerate() {
        assert_eq!(m.name, format!("m{}", i + 1));
        assert_eq!(m.client_urls, [cluster.endpoint(i).to_string()]);
        assert_eq!(m.peer_urls.len(), 1);
    }
    assert_status(
        members
            .member_add(keel_etcd_proto::etcdserverpb::MemberAddRequest::default())
            .await,
        Code::InvalidArgument,
        "one peer URL",
    );
    for bad in ["https://127.0.0.1:9", "localhost:9", "http://127.0.0.1"] {
        assert_status(
            members
                .member_add(keel_etcd_proto::etcdserverpb::MemberAddRequest {
                    peer_urls: vec![bad.to_string()],
                    is_learner: true,
                })
                .await,
            Code::InvalidArgument,
            "peer URL",
        );
    }
    assert_status(
        members
            .member_remove(keel_etcd_proto::etcdserverpb::MemberRemoveRequest { id: 77 })
            .await,
        Code::NotFound,
        "etcdserver: member not found",
    );
    assert_status(
        members
            .member_promote(keel_etcd_proto::etcdserverpb::MemberPromoteRequest { id: 1 })
            .await,
        Code::FailedPrecondition,
        "can only promote a learner member",
    );

    // Bad input.
    assert_status(
        kv.put(put("", b"v")).await,
        Code::InvalidArgument,
        "key is not provided",
    );
    assert_status(
        kv.put(PutRequest {
            lease: 7,
            ..put("l", b"v")
        })
        .await,
        Code::NotFound,
        "requested lease not found",
    );
    assert_status(
        kv.put(PutRequest {
            ignore_value: true,
            ..put("l", b"")
        })
        .await,
        Code::InvalidArgument,
        "ignore_value",
    );
    // Over request_bytes_max (1.5 MiB): etcd's own error; far over it: refused before
    // decoding, naming the limit.
    assert_status(
        kv.put(put("big", &vec![7u8; 1_700_000])).await,
        Code::InvalidArgument,
        "request is too large",
    );
    assert_status(
        kv.put(put("bigger", &vec![7u8; 3 << 20])).await,
        Code::ResourceExhausted,
        "request_bytes_max",
    );
    let too_many = TxnRequest {
        success: (0..129)
            .map(|i| put_op(&format!("{{t}}{i}"), "v"))
            .collect(),
        ..TxnRequest::default()
    };
    assert_status(
        kv.txn(too_many).await,
        Code::InvalidArgument,
        "too many operations in txn request",
    );
    nested_and_range_txns_on(cluster, &mut kv).await;
    // A compare reads its key: none may look at the cluster's reserved metadata.
    let peek = TxnRequest {
        compare: vec![Compare {
            result: compare::CompareResult::Greater.into(),
            target: compare::CompareTarget::Version.into(),
            key: b"\0keel/members/00000000000000000001".to_vec(),
            target_union: Some(compare::TargetUnion::Version(0)),
            range_end: Vec::new(),
        }],
        ..TxnRequest::default()
    };
    assert_status(kv.txn(peek).await, Code::InvalidArgument, "reserved");
    if groups > 1 {
        let (a, b) = keys_in_two_groups(groups);
        let spanning = TxnRequest {
            success: vec![put_op(&a, "1"), put_op(&b, "1")],
            ..TxnRequest::default()
        };
        assert_status(
            kv.txn(spanning).await,
            Code::FailedPrecondition,
            "span groups",
        );
        assert_status(
            kv.delete_range(DeleteRangeRequest {
                key: b"p/".to_vec(),
                range_end: prefix_end("p/"),
                prev_kv: false,
            })
            .await,
            Code::FailedPrecondition,
            "span groups",
        );
    }
    // Malformed protobuf in a sound gRPC frame: field 1 claims 100 bytes, none follow.
    assert_status(
        raw_call(
            channel(cluster, 0).await,
            "/etcdserverpb.KV/Range",
            vec![0x0a, 100],
        )
        .await,
        Code::InvalidArgument,
        "malformed protobuf",
    );
    // Unknown fields are skipped, as protobuf wants.
    let mut bytes = RangeRequest {
        key: b"p/a".to_vec(),
        ..RangeRequest::default()
    }
    .encode_to_vec();
    bytes.extend_from_slice(&[0xf8, 0x06, 0x01]); // field 111, varint 1
    let read = raw_call(channel(cluster, 1).await, "/etcdserverpb.KV/Range", bytes)
        .await
        .unwrap();
    assert_eq!(keys(&read.kvs), ["p/a"]);
    // A service Keel does not serve.
    assert_status(
        raw_call(
            channel(cluster, 1).await,
            "/etcdserverpb.Lease/LeaseGrant",
            Vec::new(),
        )
        .await,
        Code::Unimplemented,
        "",
    );
    // The members still serve after all that.
    kv.put(put("after", b"ok")).await.unwrap();
}

// ---- nested txns and compares over key ranges (tonic client) ------------------------------

fn txn_op(t: TxnRequest) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestTxn(t)),
    }
}

fn range_op(key: &str) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestRange(RangeRequest {
            key: key.into(),
            ..RangeRequest::default()
        })),
    }
}

/// A compare of `[key, range_end)` (`range_end` empty: the key alone).
fn compare_range(
    key: &str,
    range_end: &[u8],
    result: compare::CompareResult,
    target: compare::TargetUnion,
) -> Compare {
    let kind = match target {
        compare::TargetUnion::Version(_) => compare::CompareTarget::Version,
        compare::TargetUnion::CreateRevision(_) => compare::CompareTarget::Create,
        compare::TargetUnion::ModRevision(_) => compare::CompareTarget::Mod,
        compare::TargetUnion::Value(_) => compare::CompareTarget::Value,
        compare::TargetUnion::Lease(_) => compare::CompareTarget::Lease,
    };
    Compare {
        result: result.into(),
        target: kind.into(),
        key: key.into(),
        range_end: range_end.to_vec(),
        target_union: Some(target),
    }
}

fn nested_txn(
    compare: Vec<Compare>,
    success: Vec<RequestOp>,
    failure: Vec<RequestOp>,
) -> RequestOp {
    txn_op(TxnRequest {
        compare,
        success,
        failure,
    })
}

/// The nested txn answering operation `i` of `responses`.
fn nested_answer(
    responses: &[keel_etcd_proto::etcdserverpb::ResponseOp],
    i: usize,
) -> &keel_etcd_proto::etcdserverpb::TxnResponse {
    match &responses[i].response {
        Some(response_op::Response::ResponseTxn(t)) => t,
        other => panic!("operation {i} answered {other:?}, not a txn"),
    }
}

/// Nested txns (`request_txn`) and compares over key ranges (`range_end`) as etcd 3.5 serves
/// them: every compare decided before the outer txn's operations run, one revision for the
/// whole txn, `response_txn` answers, duplicate keys, the operation and depth limits, the
/// reserved keys, and groups. The keys share the `{n}` hash tag: one group.
async fn nested_and_range_txns_on(cluster: &Cluster, kv: &mut KvClient<Channel>) {
    use compare::CompareResult::{Equal, Less};
    use compare::TargetUnion::{ModRevision, Value, Version};
    let mut kv0 = KvClient::new(channel(cluster, 0).await);
    let mut before = 0;
    for k in ["{n}/a", "{n}/b"] {
        let written = kv.put(put(k, b"1")).await.unwrap().into_inner();
        before = written.header.unwrap().revision;
    }
    let all = prefix_end("{n}/");

    // The outer txn changes {n}/a first; both nested compares still see the state before.
    let t = TxnRequest {
        compare: vec![compare_range("{n}/a", b"", Equal, Value(b"1".to_vec()))],
        success: vec![
            put_op("{n}/a", "2"),
            nested_txn(
                vec![compare_range("{n}/a", b"", Equal, Value(b"1".to_vec()))],
                vec![put_op("{n}/c", "saw 1"), range_op("{n}/a")],
                vec![put_op("{n}/c", "saw 2")],
            ),
            nested_txn(
                vec![compare_range("{n}/", &all, Equal, Version(1))],
                vec![put_op("{n}/d", "all at version 1")],
                vec![put_op("{n}/d", "mixed")],
            ),
        ],
        failure: vec![put_op("{n}/e", "outer failure")],
    };
    let resp = kv.txn(t).await.unwrap().into_inner();
    assert!(resp.succeeded);
    let revision = resp.header.unwrap().revision;
    assert_eq!(revision, before + 1, "one revision for the whole txn");
    assert_eq!(resp.responses.len(), 3);
    let first = nested_answer(&resp.responses, 1);
    assert!(first.succeeded);
    match &first.responses[..] {
        [
            _,
            keel_etcd_proto::etcdserverpb::ResponseOp {
                response: Some(response_op::Response::ResponseRange(r)),
            },
        ] => {
            // The nested read is an operation: it sees the outer put.
            assert_eq!(r.kvs[0].value, b"2");
            assert_eq!(r.kvs[0].mod_revision, revision);
        }
        other => panic!("unexpected nested answers {other:?}"),
    }
    assert!(nested_answer(&resp.responses, 2).succeeded);
    let read = kv0
        .range(RangeRequest {
            key: b"{n}/".to_vec(),
            range_end: all.clone(),
            ..RangeRequest::default()
        })
        .await
        .unwrap()
        .into_inner();
    let state: Vec<(String, String, i64)> = read
        .kvs
        .iter()
        .map(|kv| {
            (
                String::from_utf8_lossy(&kv.key).into_owned(),
                String::from_utf8_lossy(&kv.value).into_owned(),
                kv.mod_revision,
            )
        })
        .collect();
    assert_eq!(
        state,
        [
            ("{n}/a".into(), "2".into(), revision),
            ("{n}/b".into(), "1".into(), before),
            ("{n}/c".into(), "saw 1".into(), revision),
            ("{n}/d".into(), "all at version 1".into(), revision),
        ]
    );

    // A range compare holds only if it holds for every key: {n}/a is at version 2 now.
    let some = |c: Compare| TxnRequest {
        compare: vec![c],
        success: vec![put_op("{n}/held", "yes")],
        failure: vec![range_op("{n}/held")],
    };
    let r = kv
        .txn(some(compare_range("{n}/", &all, Equal, Version(1))))
        .await;
    assert!(!r.unwrap().into_inner().succeeded);
    let r = kv.txn(some(compare_range(
        "{n}/",
        &all,
        Less,
        ModRevision(revision + 1),
    )));
    assert!(r.await.unwrap().into_inner().succeeded);
    // Over a range holding no key: a value compare fails, a version compare sees 0.
    let empty = prefix_end("{n}/x");
    let r = kv.txn(some(compare_range(
        "{n}/x",
        &empty,
        Less,
        Value(b"zzz".to_vec()),
    )));
    assert!(!r.await.unwrap().into_inner().succeeded);
    let r = kv.txn(some(compare_range("{n}/x", &empty, Equal, Version(0))));
    assert!(r.await.unwrap().into_inner().succeeded);

    // etcd refuses a branch writing a key twice, nested txns included; the two branches of
    // one nested txn may put the same key.
    let twice = TxnRequest {
        success: vec![
            put_op("{n}/a", "3"),
            nested_txn(vec![], vec![put_op("{n}/a", "4")], vec![]),
        ],
        ..TxnRequest::default()
    };
    assert_status(
        kv.txn(twice).await,
        Code::InvalidArgument,
        "etcdserver: duplicate key given in txn request",
    );
    let either = TxnRequest {
        success: vec![nested_txn(
            vec![compare_range("{n}/a", b"", Equal, Value(b"2".to_vec()))],
            vec![put_op("{n}/f", "then")],
            vec![put_op("{n}/f", "else")],
        )],
        ..TxnRequest::default()
    };
    assert!(kv.txn(either).await.is_ok());

    // --max-txn-ops (128) counts nested operations along the nesting: one outer operation
    // plus 128 nested ones is too many.
    let wide = TxnRequest {
        success: vec![nested_txn(
            vec![],
            (0..128)
                .map(|i| put_op(&format!("{{n}}/w{i}"), "v"))
                .collect(),
            vec![],
        )],
        ..TxnRequest::default()
    };
    assert_status(
        kv.txn(wide).await,
        Code::InvalidArgument,
        "etcdserver: too many operations in txn request",
    );
    // Nesting is bounded by the engine's TXN_DEPTH_MAX (32 levels).
    let mut deep = TxnRequest {
        success: vec![put_op("{n}/deep", "v")],
        ..TxnRequest::default()
    };
    for _ in 0..32 {
        deep = TxnRequest {
            success: vec![txn_op(deep)],
            ..TxnRequest::default()
        };
    }
    assert_status(kv.txn(deep).await, Code::InvalidArgument, "TXN_DEPTH_MAX");
    let wide_written = kv
        .range(RangeRequest {
            key: b"{n}/w".to_vec(),
            range_end: prefix_end("{n}/w"),
            count_only: true,
            ..RangeRequest::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(wide_written.count, 0, "a refused txn wrote nothing");

    // Reserved keys stay out of reach in nested operations and range compares.
    let hidden = TxnRequest {
        success: vec![nested_txn(vec![], vec![put_op("\0keel/x", "v")], vec![])],
        ..TxnRequest::default()
    };
    assert_status(kv.txn(hidden).await, Code::InvalidArgument, "reserved");
    let peek = TxnRequest {
        compare: vec![compare_range("\0", b"\0", Equal, Version(0))],
        ..TxnRequest::default()
    };
    assert_status(kv.txn(peek).await, Code::InvalidArgument, "reserved");

    if cluster.groups > 1 {
        let (a, b) = keys_in_two_groups(cluster.groups);
        let spanning = TxnRequest {
            success: vec![
                put_op(&a, "1"),
                nested_txn(vec![], vec![], vec![put_op(&b, "1")]),
            ],
            ..TxnRequest::default()
        };
        assert_status(
            kv.txn(spanning).await,
            Code::FailedPrecondition,
            "span groups",
        );
        let range_compare = TxnRequest {
            compare: vec![compare_range("a", b"b", Equal, Version(0))],
            ..TxnRequest::default()
        };
        assert_status(
            kv.txn(range_compare).await,
            Code::FailedPrecondition,
            "span groups",
        );
    }
}

fn grpc_scenario(groups: u32) {
    let _turn = serial();
    let mut cluster = Cluster::start(groups);
    let rt = runtime();
    rt.block_on(cluster.wait_ready());
    rt.block_on(grpc_scenario_on(&cluster));
    cluster.terminate_all();
}

#[test]
fn tonic_client_with_one_group() {
    grpc_scenario(1);
}

#[test]
fn tonic_client_with_four_groups() {
    grpc_scenario(4);
}

// ---- keel snapshot restore on bad input ---------------------------------------------------

/// Runs `keel snapshot restore` of `file` as member m1 of a two-member cluster into
/// `data_dir`; returns whether it succeeded and its stderr.
fn keel_restore(file: &std::path::Path, data_dir: &std::path::Path, name: &str) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_keel"))
        .args([
            "snapshot",
            "restore",
            &file.display().to_string(),
            "--data-dir",
            &data_dir.display().to_string(),
            "--name",
            name,
            "--initial-cluster",
            "m1=http://127.0.0.1:1,m2=http://127.0.0.1:3",
            "--shards",
            "1",
        ])
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn snapshot_restore_refuses_bad_input_and_leaves_nothing_behind() {
    use keel_node::server::etcd::backup::{self, Backup, GroupBackup};
    let dir = tempfile::tempdir().unwrap();
    let listing = || {
        let mut names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    };
    let good = backup::encode(&Backup {
        cluster_id: 7,
        groups: vec![GroupBackup {
            group: 0,
            revision: 2,
            kvs: vec![keel_engine::KeyValue {
                key: b"k".to_vec(),
                value: b"v".to_vec(),
                meta: keel_engine::KeyMeta {
                    create_revision: 2,
                    mod_revision: 2,
                    version: 1,
                },
            }],
        }],
    })
    .unwrap();
    let file = dir.path().join("backup.db");
    let target = dir.path().join("data");
    // Truncated, damaged, not a backup at all, missing.
    for (bytes, says) in [
        (good[..good.len() - 7].to_vec(), "truncated"),
        (
            {
                let mut b = good.clone();
                b[30] ^= 0x10;
                b
            },
            "checksum",
        ),
        (b"SQLite format 3\0".to_vec(), "not a Keel backup"),
    ] {
        std::fs::write(&file, &bytes).unwrap();
        let (ok, err) = keel_restore(&file, &target, "m1");
        assert!(
            !ok && err.contains("unusable") && err.contains(says),
            "{err}"
        );
    }
    std::fs::remove_file(&file).unwrap();
    let (ok, err) = keel_restore(&file, &target, "m1");
    assert!(!ok && err.contains("reading the backup"), "{err}");
    assert_eq!(listing(), Vec::<String>::new());
    // A name not in --initial-cluster.
    std::fs::write(&file, &good).unwrap();
    let (ok, err) = keel_restore(&file, &target, "m3");
    assert!(
        !ok && err.contains("not a member of --initial-cluster"),
        "{err}"
    );
    assert_eq!(listing(), ["backup.db"]);
    // A good restore, then the same directory again: in use.
    let (ok, err) = keel_restore(&file, &target, "m1");
    assert!(ok, "{err}");
    let (ok, err) = keel_restore(&file, &target, "m1");
    assert!(!ok && err.contains("is not empty"), "{err}");
    assert_eq!(listing(), ["backup.db", "data"]);
    assert!(target.join("keel.meta").is_file());
    assert!(target.join("shard-0/checkpoints/group-0").is_dir());
}

// ---- a member joins a running cluster -----------------------------------------------------

/// Waits until `what` holds (checked every 100 ms), for at most `wait`; the failure names
/// what never held and the members' logs.
fn eventually(cluster: &Cluster, wait: Duration, what: &str, mut holds: impl FnMut() -> bool) {
    let deadline = Instant::now() + wait;
    while !holds() {
        assert!(
            Instant::now() < deadline,
            "{what}: not within {wait:?}{}",
            cluster.stderr_tails()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The value of `key` as etcdctl prints it at `endpoint` (`None`: absent or an error).
fn value_at(cluster: &Cluster, endpoint: usize, key: &str, serializable: bool) -> Option<String> {
    let consistency = if serializable {
        "--consistency=s"
    } else {
        "--consistency=l"
    };
    let out = ctl(
        cluster,
        endpoint,
        &["get", key, "--print-value-only", consistency],
        "",
    );
    let text = String::from_utf8_lossy(&out.stdout).trim_end().to_string();
    (out.status.success() && !text.is_empty()).then_some(text)
}

/// `etcdctl member add m4` of a real 3-member cluster (4 groups, 2 shards each), `keel
/// server --initial-cluster-state existing` for it: it learns its id from the running
/// members, catches up as a learner of every group (by snapshot: the groups checkpoint
/// every 20 entries), is promoted and serves; it restarts from its data directory alone;
/// then an original member is removed, stops with a log line saying so, and the three left
/// serve every acknowledged key linearizably.
#[test]
fn a_member_joins_with_existing_and_an_original_member_is_removed() {
    let _turn = serial();
    etcdctl_path();
    let groups = 4;
    // Small checkpoints: the joiner's groups catch up by snapshot, their logs compacted.
    let small_snapshots = [
        "--snapshot-entries",
        "20",
        "--snapshot-catchup-entries",
        "5",
    ];
    let mut cluster = Cluster::start_with(groups, None, &small_snapshots);
    runtime().block_on(cluster.wait_ready());
    let mut acked: Vec<(String, String)> = Vec::new();
    for i in 0..60 {
        let (k, v) = (format!("before/{i:02}"), format!("v{i}"));
        assert_eq!(ctl_ok(&cluster, i % MEMBERS, &["put", &k, &v], ""), "OK\n");
        acked.push((k, v));
    }
    let covered: std::collections::BTreeSet<u32> = acked
        .iter()
        .map(|(k, _)| group_of(k.as_bytes(), groups))
        .collect();
    assert_eq!(covered.len(), 4, "the keys cover every group");

    let mut held = Vec::new();
    let peer = free_ports(SHARDS, &mut held);
    let client = free_ports(1, &mut held);
    drop(held);
    let peer_url = format!("http://127.0.0.1:{peer}");
    let added = ctl_ok(
        &cluster,
        1,
        &["member", "add", "m4", &format!("--peer-urls={peer_url}")],
        "",
    );
    assert!(added.contains("added to cluster"), "{added}");
    assert!(added.contains("ETCD_NAME=\"m4\""), "{added}");
    assert!(
        added.contains("ETCD_INITIAL_CLUSTER_STATE=\"existing\""),
        "{added}"
    );
    let initial_cluster = added
        .lines()
        .find_map(|l| l.strip_prefix("ETCD_INITIAL_CLUSTER="))
        .unwrap_or_else(|| panic!("no ETCD_INITIAL_CLUSTER line: {added}"))
        .trim_matches('"')
        .to_string();
    assert_eq!(initial_cluster.split(',').count(), 4, "{initial_cluster}");
    assert!(
        initial_cluster.contains(&format!("m4={peer_url}")),
        "{initial_cluster}"
    );
    let dir = cluster._dir.path().to_path_buf();
    // Its --groups and --shards differ from the cluster's: the cluster's are used.
    let joiner_flags = [
        &[
            "--initial-cluster-state",
            "existing",
            "--groups",
            "8",
            "--shards",
            "3",
        ][..],
        &small_snapshots[..],
    ]
    .concat();
    cluster.members.push(spawn_member(
        &dir,
        "m4",
        peer,
        client,
        &initial_cluster,
        &joiner_flags,
    ));
    let m4 = MEMBERS;
    // It serves the keys written before it joined, from its own replicas.
    eventually(
        &cluster,
        Duration::from_secs(60),
        "m4 serves the old keys",
        || {
            acked
                .iter()
                .all(|(k, v)| value_at(&cluster, m4, k, true).as_deref() == Some(v.as_str()))
        },
    );
    // Listed started, with its name, as a voter (promoted once in sync in every group).
    eventually(
        &cluster,
        Duration::from_secs(30),
        "m4 listed as a started voter",
        || {
            let list = ctl_ok(&cluster, 0, &["member", "list"], "");
            list.lines()
                .any(|l| l.starts_with("4, started, m4, ") && l.ends_with(", false"))
        },
    );
    let log = std::fs::read_to_string(&cluster.members[m4].err_path).unwrap();
    assert!(log.contains("joined"), "{log}");
    // Writes through it commit.
    for i in 0..20 {
        let (k, v) = (format!("after/{i:02}"), format!("w{i}"));
        assert_eq!(ctl_ok(&cluster, m4, &["put", &k, &v], ""), "OK\n");
        acked.push((k, v));
    }
    // It restarts from its data directory alone: no other member in its flags, and `new`
    // (the flags of a joined member's data directory are ignored).
    cluster.terminate(m4);
    cluster.members[m4] = spawn_member(
        &dir,
        "m4",
        peer,
        client,
        &format!("m4={peer_url}"),
        &["--initial-cluster-state", "new"],
    );
    eventually(
        &cluster,
        Duration::from_secs(30),
        "m4 serves after a restart",
        || value_at(&cluster, m4, "after/19", false).as_deref() == Some("w19"),
    );

    // An original member leaves: m1, which leads group 0 (where the change is made).
    // Refused while group 0's leader has not heard from the restarted m4 for long enough
    // ("not enough started members"), or while m4 does not know that leader yet: asked
    // again until it goes through.
    eventually(&cluster, Duration::from_secs(20), "m1 removed", || {
        let out = ctl(&cluster, m4, &["member", "remove", "1"], "");
        let said = String::from_utf8_lossy(&out.stdout);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success()
                || err.contains("not enough started members")
                || err.contains("no leader"),
            "{said}{err}"
        );
        eprintln!(
            "member remove 1: {said}{}",
            err.lines().last().unwrap_or("")
        );
        said.contains("removed from cluster")
    });
    let mut m1 = cluster.members[0].child.take().unwrap();
    let mut exit = None;
    eventually(&cluster, Duration::from_secs(60), "m1 stops", || {
        exit = m1.try_wait().unwrap();
        exit.is_some()
    });
    let log = std::fs::read_to_string(&cluster.members[0].err_path).unwrap();
    assert!(log.contains("was removed from the cluster"), "{log}");
    assert!(exit.is_some_and(|s| !s.success()), "{log}");
    eventually(
        &cluster,
        Duration::from_secs(30),
        "three members listed",
        || ctl_ok(&cluster, 1, &["member", "list"], "").lines().count() == 3,
    );
    for i in [1, 2, m4] {
        for (k, v) in &acked {
            eventually(
                &cluster,
                Duration::from_secs(20),
                "a linearizable read",
                || value_at(&cluster, i, k, false).as_deref() == Some(v.as_str()),
            );
        }
    }
    assert_eq!(ctl_ok(&cluster, 2, &["put", "last", "x"], ""), "OK\n");
    for i in [1, 2, m4] {
        cluster.terminate(i);
    }
}

/// `existing` for a member the cluster never added, and `existing` with no member up: the
/// process exits non-zero with an error naming the member (after the bounded wait, for the
/// second), and writes no identity to its data directory.
#[test]
fn joining_is_refused_for_a_member_never_added_and_gives_up_without_peers() {
    let _turn = serial();
    let mut cluster = Cluster::start(1);
    runtime().block_on(cluster.wait_ready());
    let dir = cluster._dir.path().to_path_buf();
    let mut held = Vec::new();
    let peer = free_ports(SHARDS, &mut held);
    let client = free_ports(1, &mut held);
    let nobody = free_ports(1, &mut held);
    drop(held);
    let running: Vec<String> = (0..MEMBERS)
        .map(|i| {
            let list = ctl_ok(&cluster, 0, &["member", "list"], "");
            let line = list
                .lines()
                .find(|l| l.contains(&format!(", m{}, ", i + 1)))
                .unwrap()
                .to_string();
            let url = line.split(", ").nth(3).unwrap().to_string();
            format!("m{}={url}", i + 1)
        })
        .collect();
    let wait_exit = |m: &mut Member, within: Duration| {
        let started = Instant::now();
        let child = m.child.as_mut().unwrap();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return (status, started.elapsed());
            }
            assert!(started.elapsed() < within, "{} still running", m.name);
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    // Starts `name` with `existing` and expects it to exit non-zero within `within`, saying
    // each of `says`, leaving no identity in its data directory.
    let refused = |name: &str, peer: u16, client: u16, initial: &str, within, says: &[&str]| {
        let mut m = spawn_member(
            &dir,
            name,
            peer,
            client,
            initial,
            &["--initial-cluster-state", "existing"],
        );
        let (status, _) = wait_exit(&mut m, within);
        let err = std::fs::read_to_string(&m.err_path).unwrap();
        assert!(!status.success(), "{err}");
        for said in says {
            assert!(err.contains(said), "{name} should say {said:?}: {err}");
        }
        assert!(!dir.join(name).join("keel.meta").exists());
    };
    let stray_cluster = format!("{},m9=http://127.0.0.1:{peer}", running.join(","));
    refused(
        "m9",
        peer,
        client,
        &stray_cluster,
        Duration::from_secs(20),
        &["member not found", "m9"],
    );

    // A member that started before and lost its data directory is refused: under its old
    // id it would vote again without the term and vote it lost. m3 stops, its data is
    // wiped, and it asks to join as itself (m1 and m2 keep a quorum and answer).
    let m3_peer: u16 = running[2].rsplit(':').next().unwrap().parse().unwrap();
    cluster.terminate(2);
    std::fs::remove_dir_all(dir.join("m3")).unwrap();
    let mut held = Vec::new();
    let client3 = free_ports(1, &mut held);
    drop(held);
    refused(
        "m3",
        m3_peer,
        client3,
        &running.join(","),
        Duration::from_secs(40),
        &["started before", "member remove"],
    );

    let lonely = format!("m1=http://127.0.0.1:{nobody},m8=http://127.0.0.1:{peer}");
    let mut alone = spawn_member(
        &dir,
        "m8",
        peer,
        client,
        &lonely,
        &[
            "--initial-cluster-state",
            "existing",
            "--join-timeout-ms",
            "2000",
        ],
    );
    let (status, took) = wait_exit(&mut alone, Duration::from_secs(20));
    let err = std::fs::read_to_string(&alone.err_path).unwrap();
    assert!(!status.success(), "{err}");
    assert!(
        err.contains("no running member answered m8's join request"),
        "{err}"
    );
    assert!(err.contains("asking again"), "progress is logged: {err}");
    assert!(took < Duration::from_secs(10), "{took:?}");
    assert!(!dir.join("m8/keel.meta").exists());
    cluster.terminate_all();
}
