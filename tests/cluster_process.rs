//! Real-process tests: three `keel server` processes on 127.0.0.1 with free ports and
//! temporary data directories, driven through the `keel` CLI and through keel-client.
//!
//! - the client commands (`put`, `get`, `del`, `txn`, `health`) against the cluster, and a
//!   member stopped with SIGTERM exits 0;
//! - every write acknowledged under load survives `kill -9` of a group's leader (restarted
//!   from its data directory, it catches up) and then of every member at once, three times
//!   (all restarted), and the cluster serves again;
//! - `keel bench cluster` on members of its own (started, measured, stopped with SIGTERM)
//!   and against a running cluster, through the native API and the etcd API;
//! - a member killed while the others write past their log compaction restarts and
//!   catches up by snapshot (its own serializable reads serve every write);
//! - bad input on the client port (garbage, a truncated frame, an oversized length, a sound
//!   frame with an unknown kind, a client that never reads its responses) costs only that
//!   connection: the member keeps running and serving others.
//!
//! The tests take turns (one cluster at a time on a small machine), and each stops its
//! members with SIGTERM at the end and checks they exit 0.

use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use keel_client::wire::{
    self, ClientLimits, ErrorStatus, GetRequest, Request, RequestFrame, ResponseDecoder,
    ServerPreface,
};
use keel_client::{Client, ClientOptions, ReadConsistency};

/// Shards per member: with more than one, a member's groups live on several threads and
/// logs, which the tests should cover.
mod common;
use common::{free_ports, run_with_stdin, runtime, serial};

const SHARDS: u16 = 2;
const GROUPS: u32 = 4;
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Times every member is killed at once under load and restarted, the last with the
/// writers stopping.
const FULL_CRASHES: usize = 3;

struct Member {
    name: String,
    client_address: String,
    args: Vec<String>,
    err_path: PathBuf,
    child: Option<Child>,
}

/// Members of a cluster, killed when dropped.
struct Cluster {
    _dir: tempfile::TempDir,
    members: Vec<Member>,
}

impl Cluster {
    fn start(nodes: usize) -> Cluster {
        Cluster::start_with(nodes, &[])
    }

    /// Starts `nodes` members with `extra` flags after the usual ones.
    fn start_with(nodes: usize, extra: &[&str]) -> Cluster {
        let dir = tempfile::Builder::new()
            .prefix("keel-cluster-test-")
            .tempdir()
            .unwrap();
        let mut held = Vec::new();
        let mut peers = Vec::new();
        let mut clients = Vec::new();
        for _ in 0..nodes {
            peers.push(free_ports(SHARDS, &mut held));
            clients.push(free_ports(1, &mut held));
        }
        let initial_cluster = (0..nodes)
            .map(|i| format!("m{}=http://127.0.0.1:{}", i + 1, peers[i]))
            .collect::<Vec<_>>()
            .join(",");
        let members = (0..nodes)
            .map(|i| {
                let name = format!("m{}", i + 1);
                let args = vec![
                    "server".into(),
                    "--name".into(),
                    name.clone(),
                    "--data-dir".into(),
                    dir.path().join(&name).display().to_string(),
                    "--listen-peer-urls".into(),
                    format!("http://127.0.0.1:{}", peers[i]),
                    "--listen-client-urls".into(),
                    format!("http://127.0.0.1:{}", clients[i]),
                    "--initial-cluster".into(),
                    initial_cluster.clone(),
                    "--groups".into(),
                    GROUPS.to_string(),
                    "--shards".into(),
                    SHARDS.to_string(),
                ];
                let args = args
                    .into_iter()
                    .chain(extra.iter().map(|s| (*s).to_string()))
                    .collect();
                Member {
                    err_path: dir.path().join(format!("{name}.err")),
                    name,
                    client_address: format!("127.0.0.1:{}", clients[i]),
                    args,
                    child: None,
                }
            })
            .collect();
        drop(held);
        let mut cluster = Cluster { _dir: dir, members };
        for i in 0..nodes {
            cluster.spawn(i);
        }
        cluster
    }

    fn spawn(&mut self, i: usize) {
        let m = &mut self.members[i];
        assert!(m.child.is_none(), "{} is running", m.name);
        let err = File::options()
            .create(true)
            .append(true)
            .open(&m.err_path)
            .unwrap();
        m.child = Some(
            Command::new(env!("CARGO_BIN_EXE_keel"))
                .args(&m.args)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(err)
                .spawn()
                .unwrap(),
        );
    }

    fn endpoints(&self) -> Vec<String> {
        self.members
            .iter()
            .map(|m| m.client_address.clone())
            .collect()
    }

    fn endpoints_flag(&self) -> String {
        self.endpoints().join(",")
    }

    /// SIGKILL, and reap.
    fn kill9(&mut self, i: usize) {
        let mut child = self.members[i].child.take().expect("running");
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// SIGTERM, and the exit status within 20 s.
    fn terminate(&mut self, i: usize) -> ExitStatus {
        let mut child = self.members[i].child.take().expect("running");
        let pid = libc::pid_t::try_from(child.id()).unwrap();
        // SAFETY: kill(2) touches no memory of ours; the child is not reaped yet (we own its
        // `Child` and have not waited), so its pid cannot have been reused.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "{} still running 20 s after SIGTERM{}",
                    self.members[i].name,
                    self.stderr_tails()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops every member with SIGTERM and checks each exits 0.
    fn terminate_all(&mut self) {
        for i in 0..self.members.len() {
            if self.members[i].child.is_some() {
                let status = self.terminate(i);
                assert!(
                    status.success(),
                    "{} exited with {status} after SIGTERM{}",
                    self.members[i].name,
                    self.stderr_tails()
                );
            }
        }
    }

    /// Panics (with the members' stderr) if a member has exited.
    fn assert_running(&mut self) {
        for i in 0..self.members.len() {
            if let Some(child) = &mut self.members[i].child {
                if let Some(status) = child.try_wait().unwrap() {
                    panic!(
                        "{} exited with {status}{}",
                        self.members[i].name,
                        self.stderr_tails()
                    );
                }
            }
        }
    }

    fn pid(&self, i: usize) -> u32 {
        self.members[i].child.as_ref().expect("running").id()
    }

    fn index_of(&self, client_address: &str) -> usize {
        self.members
            .iter()
            .position(|m| m.client_address == client_address)
            .unwrap_or_else(|| panic!("no member serves clients at {client_address}"))
    }

    /// Waits until a status request answers with a leader for every group and every
    /// member's client address.
    async fn wait_ready(&mut self) -> Client {
        let started = Instant::now();
        let endpoints = self.endpoints();
        let endpoints: Vec<&str> = endpoints.iter().map(String::as_str).collect();
        let options = ClientOptions {
            connect_timeout: Duration::from_millis(500),
            request_timeout: Duration::from_secs(1),
            attempts_max: 1,
            ..ClientOptions::default()
        };
        loop {
            self.assert_running();
            let last = match Client::connect_with(&endpoints, options.clone()).await {
                Ok(client) => match client.status().await {
                    // Every member's client address known too: until a member knows
                    // them, it answers "not the leader" without naming the leader.
                    Ok(s)
                        if s.groups == GROUPS
                            && s.leaders.iter().all(Option::is_some)
                            && s.members.len() == self.members.len() =>
                    {
                        return Client::connect(&endpoints).await.unwrap();
                    }
                    Ok(s) => format!("leaders {:?}, members {:?}", s.leaders, s.members),
                    Err(e) => e.to_string(),
                },
                Err(e) => e.to_string(),
            };
            assert!(
                started.elapsed() < READY_TIMEOUT,
                "not ready within {READY_TIMEOUT:?}: {last}{}",
                self.stderr_tails()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn stderr_tails(&self) -> String {
        let mut out = String::new();
        for m in &self.members {
            let text = std::fs::read_to_string(&m.err_path).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            out.push_str(&format!("\n--- {} stderr:", m.name));
            for line in &lines[lines.len().saturating_sub(30)..] {
                out.push_str("\n  ");
                out.push_str(line);
            }
        }
        out
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

/// Runs the CLI with `args` and `stdin`.
fn keel(args: &[&str], stdin: &str) -> Output {
    run_with_stdin(Command::new(env!("CARGO_BIN_EXE_keel")).args(args), stdin)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Asserts the exit code, showing the output otherwise.
fn expect(cluster: &Cluster, output: &Output, code: i32) -> String {
    assert_eq!(
        output.status.code(),
        Some(code),
        "stdout: {}\nstderr: {}{}",
        text(&output.stdout),
        text(&output.stderr),
        cluster.stderr_tails()
    );
    text(&output.stdout)
}

#[test]
fn client_commands_against_three_processes() {
    let _turn = serial();
    let mut cluster = Cluster::start(3);
    runtime().block_on(cluster.wait_ready());
    let all = cluster.endpoints_flag();
    let one = format!("http://{}", cluster.endpoints()[1]);

    assert_eq!(
        expect(
            &cluster,
            &keel(&["put", "--endpoints", &all, "greeting", "hello"], ""),
            0
        ),
        "OK\n"
    );
    assert_eq!(
        expect(
            &cluster,
            &keel(&["get", "--endpoints", &one, "greeting"], ""),
            0
        ),
        "hello\n"
    );
    // A serializable read may be served by a member that has not applied the put yet.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = keel(
            &[
                "get",
                "--endpoints",
                &one,
                "--consistency",
                "serializable",
                "greeting",
            ],
            "",
        );
        if out.status.code() == Some(0) && text(&out.stdout) == "hello\n" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "serializable read never saw the put"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let absent = keel(&["get", "--endpoints", &all, "no-such-key"], "");
    assert_eq!(expect(&cluster, &absent, 1), "");
    assert!(text(&absent.stderr).contains("not found"));

    // A transaction over keys of one hash tag: the compare holds, the success branch runs.
    expect(
        &cluster,
        &keel(&["put", "--endpoints", &all, "{t}/a", "1"], ""),
        0,
    );
    let script = "value(\"{t}/a\") = \"1\"\n\nput {t}/b 2\nget {t}/a\n\nput {t}/c 3\n";
    assert_eq!(
        expect(&cluster, &keel(&["txn", "--endpoints", &all], script), 0),
        "SUCCESS\n\nOK\n\n{t}/a\n1\n"
    );
    let script = "value(\"{t}/a\") = \"2\"\n\nput {t}/b 9\n\nget {t}/b\n";
    assert_eq!(
        expect(&cluster, &keel(&["txn", "--endpoints", &all], script), 0),
        "FAILURE\n\n{t}/b\n2\n"
    );
    // Keys of different groups cannot share a transaction; the error says what to do.
    let (x, y) = two_keys_in_different_groups();
    let script = format!("\nput {x} 1\nput {y} 2\n");
    let spans = keel(&["txn", "--endpoints", &all], &script);
    expect(&cluster, &spans, 2);
    assert!(
        text(&spans.stderr).contains("hash tag"),
        "{}",
        text(&spans.stderr)
    );
    let bad = keel(&["txn", "--endpoints", &all], "size(\"k\") = \"1\"\n");
    expect(&cluster, &bad, 2);
    assert!(
        text(&bad.stderr).contains("line 1"),
        "{}",
        text(&bad.stderr)
    );

    assert_eq!(
        expect(
            &cluster,
            &keel(&["del", "--endpoints", &all, "greeting"], ""),
            0
        ),
        "1\n"
    );
    expect(
        &cluster,
        &keel(&["get", "--endpoints", &all, "greeting"], ""),
        1,
    );
    assert_eq!(
        expect(
            &cluster,
            &keel(&["del", "--endpoints", &all, "greeting"], ""),
            0
        ),
        "0\n"
    );

    let health = expect(&cluster, &keel(&["health", "--endpoints", &all], ""), 0);
    assert!(
        health.contains("healthy: every one of 4 groups"),
        "{health}"
    );

    // Errors name the endpoint and exit 2.
    let dead = keel(&["get", "--endpoints", "127.0.0.1:1", "k"], "");
    expect(&cluster, &dead, 2);
    assert!(
        text(&dead.stderr).contains("127.0.0.1:1"),
        "{}",
        text(&dead.stderr)
    );
    expect(
        &cluster,
        &keel(&["get", "--endpoints", "https://127.0.0.1:1", "k"], ""),
        2,
    );

    // The benchmark against this running cluster: no member CPU time to measure.
    let bench = keel(
        &[
            "bench",
            "cluster",
            "--endpoints",
            &all,
            "--secs",
            "1",
            "--clients",
            "2",
        ],
        "",
    );
    let bench = expect(&cluster, &bench, 0);
    let line = bench.lines().last().unwrap_or_default();
    assert!(
        line.starts_with("cluster api=native nodes=3 clients=2 workload=put")
            && line.contains(" cpu_us_per_op=n/a ")
            && line.contains(" errors=0"),
        "{bench}"
    );
    // The same through the etcd API, measuring the members named by --server-pids.
    let pids = format!("{},{},{}", cluster.pid(0), cluster.pid(1), cluster.pid(2));
    let bench = keel(
        &[
            "bench",
            "cluster",
            "--api",
            "etcd",
            "--endpoints",
            &all,
            "--server-pids",
            &pids,
            "--secs",
            "1",
            "--clients",
            "2",
            "--workload",
            "txn",
        ],
        "",
    );
    let bench = expect(&cluster, &bench, 0);
    let line = bench.lines().last().unwrap_or_default();
    assert!(
        line.starts_with("cluster api=etcd nodes=3 clients=2 workload=txn")
            && !line.contains(" cpu_us_per_op=n/a ")
            && line.contains(" errors=0"),
        "{bench}"
    );

    // One member stopped: it exits 0, and the other two still have a leader for every
    // group (after an election for the groups it led).
    let status = cluster.terminate(0);
    assert!(
        status.success(),
        "m1 exited with {status}{}",
        cluster.stderr_tails()
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = keel(&["health", "--endpoints", &all], "");
        if out.status.code() == Some(0) {
            assert!(
                text(&out.stdout).contains("unreachable"),
                "{}",
                text(&out.stdout)
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "two of three members never became healthy: {}{}",
            text(&out.stdout),
            cluster.stderr_tails()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // One member of three left: no group can reach a quorum, so no linearizable read
    // completes and health fails with exit 1.
    let status = cluster.terminate(1);
    assert!(
        status.success(),
        "m2 exited with {status}{}",
        cluster.stderr_tails()
    );
    let out = keel(
        &["health", "--endpoints", &all, "--command-timeout", "2"],
        "",
    );
    let report = expect(&cluster, &out, 1);
    assert!(
        report.contains("unhealthy: 4 of 4 groups without a leader"),
        "{report}"
    );
    // And with no member at all, health says so with exit 1.
    cluster.terminate_all();
    let out = keel(
        &["health", "--endpoints", &all, "--command-timeout", "2"],
        "",
    );
    expect(&cluster, &out, 1);
}

fn two_keys_in_different_groups() -> (String, String) {
    let x = "x0".to_owned();
    let gx = keel_client::group_of(x.as_bytes(), GROUPS);
    let y = (1..)
        .map(|i| format!("y{i}"))
        .find(|y| keel_client::group_of(y.as_bytes(), GROUPS) != gx)
        .unwrap();
    (x, y)
}

/// Every acknowledged write: key and value.
type Acks = Arc<Mutex<Vec<(String, String)>>>;

/// Writers that put unique keys until `stop` and record every acknowledged put.
fn start_writers(
    rt: &tokio::runtime::Runtime,
    client: &Client,
    writers: usize,
    stop: &Arc<AtomicBool>,
    acks: &Acks,
    failures: &Arc<AtomicU64>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..writers)
        .map(|w| {
            let (client, stop, acks, failures) =
                (client.clone(), stop.clone(), acks.clone(), failures.clone());
            rt.spawn(async move {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let key = format!("ack/{w}/{n:08}");
                    let value = format!("w{w}-n{n}");
                    n += 1;
                    match client.put(key.clone(), value.clone()).await {
                        Ok(_) => acks.lock().unwrap().push((key, value)),
                        // The write's fate is unknown: it may or may not be there.
                        Err(_) => {
                            failures.fetch_add(1, Ordering::Relaxed);
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    }
                }
            })
        })
        .collect()
}

fn acked(acks: &Acks) -> usize {
    acks.lock().unwrap().len()
}

/// Waits until at least `more` writes beyond `from` are acknowledged.
fn wait_for_progress(cluster: &mut Cluster, acks: &Acks, from: usize, more: usize, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while acked(acks) < from + more {
        cluster.assert_running();
        assert!(
            Instant::now() < deadline,
            "no progress {what}: {} acknowledged{}",
            acked(acks),
            cluster.stderr_tails()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn acknowledged_writes_survive_kill_9_of_a_leader_and_of_every_member() {
    let _turn = serial();
    let rt = runtime();
    let mut cluster = Cluster::start(3);
    let client = rt.block_on(cluster.wait_ready());
    let stop = Arc::new(AtomicBool::new(false));
    let acks: Acks = Arc::default();
    let failures = Arc::new(AtomicU64::new(0));
    let writers = start_writers(&rt, &client, 8, &stop, &acks, &failures);
    wait_for_progress(&mut cluster, &acks, 0, 200, "before any kill");

    // Kill the leader of a group; the others elect a new one and writes go on.
    let status = rt.block_on(client.status()).unwrap();
    let leader = status.leaders[1].expect("group 1 has a leader");
    let address = &status
        .members
        .iter()
        .find(|m| m.id == leader)
        .expect("the leader is a member")
        .client_address;
    let victim = cluster.index_of(address);
    cluster.kill9(victim);
    let before = acked(&acks);
    wait_for_progress(
        &mut cluster,
        &acks,
        before,
        200,
        "after the leader's kill -9",
    );
    let while_down = acks
        .lock()
        .unwrap()
        .last()
        .cloned()
        .expect("writes acknowledged");
    cluster.spawn(victim);
    let before = acked(&acks);
    wait_for_progress(
        &mut cluster,
        &acks,
        before,
        200,
        "after the leader's restart",
    );
    // The restarted member caught up: it serves, from its own state, a write acknowledged
    // while it was down.
    let address = cluster.endpoints()[victim].clone();
    let deadline = Instant::now() + Duration::from_secs(20);
    while read_at(&address, &while_down.0).as_deref() != Some(while_down.1.as_bytes()) {
        assert!(
            Instant::now() < deadline,
            "the restarted member never caught up with {while_down:?}{}",
            cluster.stderr_tails()
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // Kill everyone at once, in the middle of the writes, and start them all again; the
    // writers carry on throughout, and stop with the last crash.
    for round in 0..FULL_CRASHES - 1 {
        for i in 0..3 {
            cluster.kill9(i);
        }
        for i in 0..3 {
            cluster.spawn(i);
        }
        rt.block_on(cluster.wait_ready());
        let before = acked(&acks);
        let what = format!("after full crash {}", round + 1);
        wait_for_progress(&mut cluster, &acks, before, 100, &what);
    }
    for i in 0..3 {
        cluster.kill9(i);
    }
    stop.store(true, Ordering::Relaxed);
    for i in 0..3 {
        cluster.spawn(i);
    }
    let fresh = rt.block_on(cluster.wait_ready());
    for w in writers {
        rt.block_on(w).unwrap();
    }

    // Every acknowledged write is there, read linearizably.
    let acks = std::mem::take(&mut *acks.lock().unwrap());
    eprintln!(
        "{} writes acknowledged, {} failed (fate unknown)",
        acks.len(),
        failures.load(Ordering::Relaxed)
    );
    let missing = rt.block_on(async {
        let mut missing = Vec::new();
        for chunk in acks.chunks(64) {
            let mut reads = tokio::task::JoinSet::new();
            for (key, value) in chunk.iter().cloned() {
                let client = fresh.clone();
                reads.spawn(async move {
                    let got = client
                        .get(key.clone())
                        .await
                        .map(|r| r.kv.map(|kv| kv.value));
                    (key, value, got)
                });
            }
            while let Some(joined) = reads.join_next().await {
                let (key, value, got) = joined.unwrap();
                match got {
                    Ok(Some(v)) if v == value.as_bytes() => {}
                    other => missing.push(format!("{key}: expected {value}, got {other:?}")),
                }
            }
        }
        missing
    });
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged writes lost, e.g. {:?}",
        missing.len(),
        acks.len(),
        &missing[..missing.len().min(5)]
    );

    // And the cluster serves again.
    rt.block_on(async {
        fresh.put("after", "restart").await.unwrap();
        let got = fresh.get("after").await.unwrap().kv.unwrap();
        assert_eq!(got.value, b"restart");
    });
    cluster.terminate_all();
}

/// Opens a native connection to `address` and exchanges prefaces.
fn native_connection(address: &str) -> (TcpStream, ServerPreface) {
    let mut stream = TcpStream::connect(address).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream.write_all(&wire::client_preface()).unwrap();
    let mut preface = [0u8; wire::SERVER_PREFACE_BYTES];
    stream.read_exact(&mut preface).unwrap();
    (stream, ServerPreface::decode(&preface).unwrap())
}

/// Reads until the server closes the connection (EOF or reset), within 10 s; returns what
/// it sent first.
fn read_until_closed(stream: &mut TcpStream, case: &str) -> Vec<u8> {
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut received = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return received,
            Ok(n) => received.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return received,
            Err(e) => panic!("{case}: the server did not close the connection: {e}"),
        }
    }
}

/// A frame around `body`, with its length and CRC.
fn frame(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&u32::try_from(body.len()).unwrap().to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(body).to_le_bytes());
    out.extend_from_slice(body);
    out
}

fn get_frame(id: u64, key: &str, groups: u32) -> Vec<u8> {
    let mut out = Vec::new();
    wire::encode_request(
        &RequestFrame {
            id,
            group: keel_client::group_of(key.as_bytes(), groups),
            request: Request::Get(GetRequest {
                consistency: ReadConsistency::Serializable,
                ..GetRequest::new(key)
            }),
        },
        &ClientLimits::default(),
        &mut out,
    )
    .unwrap();
    out
}

/// A serializable read of `key` served by the member at `address` from its own state;
/// `None` when the key is absent or the member does not answer (yet).
fn read_at(address: &str, key: &str) -> Option<Vec<u8>> {
    let mut s = TcpStream::connect(address).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(&wire::client_preface()).ok()?;
    let mut preface = [0u8; wire::SERVER_PREFACE_BYTES];
    s.read_exact(&mut preface).ok()?;
    s.write_all(&get_frame(1, key, GROUPS)).ok()?;
    let mut decoder = ResponseDecoder::new(ClientLimits::default());
    let mut buf = [0u8; 4096];
    loop {
        let n = s.read(&mut buf).ok().filter(|&n| n > 0)?;
        decoder.extend(&buf[..n]);
        if let Some(answer) = decoder.next_frame().unwrap() {
            return match answer.result {
                Ok(wire::Response::Get(got)) => got.kv.map(|kv| kv.value),
                _ => None,
            };
        }
    }
}

/// The member's resident memory, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[test]
fn bad_input_on_the_client_port_costs_only_that_connection() {
    let _turn = serial();
    let rt = runtime();
    let mut cluster = Cluster::start(3);
    let client = rt.block_on(cluster.wait_ready());
    rt.block_on(client.put("stable", "value")).unwrap();
    let target = cluster.endpoints()[0].clone();
    // A client of the target member alone, to check it still serves after each case.
    let check = |cluster: &mut Cluster, case: &str| {
        cluster.assert_running();
        let alone = rt
            .block_on(Client::connect(&[target.as_str()]))
            .unwrap_or_else(|e| panic!("after {case}: {e}"));
        let got = rt
            .block_on(alone.get("stable"))
            .unwrap_or_else(|e| panic!("after {case}: {e}"));
        assert_eq!(got.kv.unwrap().value, b"value", "after {case}");
    };

    // Garbage instead of a preface (not ASCII, so no other protocol's sniffing takes it).
    let mut s = TcpStream::connect(&target).unwrap();
    let garbage: Vec<u8> = (0..4096u32)
        .map(|i| i.wrapping_mul(2_654_435_761).to_le_bytes()[2] | 0x80)
        .collect();
    let _ = s.write_all(&garbage);
    read_until_closed(&mut s, "garbage");
    check(&mut cluster, "garbage");

    // A frame cut short, then the client's half of the connection closed.
    let (mut s, _) = native_connection(&target);
    let whole = get_frame(1, "stable", GROUPS);
    s.write_all(&whole[..whole.len() / 2]).unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    read_until_closed(&mut s, "truncated frame");
    check(&mut cluster, "a truncated frame");

    // A length far over request_bytes_max: fatal for the connection, before any allocation.
    let (mut s, preface) = native_connection(&target);
    assert!(preface.request_bytes_max < u32::MAX);
    let mut header = u32::MAX.to_le_bytes().to_vec();
    header.extend_from_slice(&[0; 4]);
    s.write_all(&header).unwrap();
    read_until_closed(&mut s, "oversized length");
    check(&mut cluster, "an oversized length");

    // One byte over the limit the member announced in its preface: refused all the same.
    let (mut s, preface) = native_connection(&target);
    let mut header = (preface.request_bytes_max + 1).to_le_bytes().to_vec();
    header.extend_from_slice(&[0; 4]);
    s.write_all(&header).unwrap();
    read_until_closed(&mut s, "length one over request_bytes_max");
    check(&mut cluster, "a length one over request_bytes_max");

    // A wrong checksum: fatal too.
    let (mut s, _) = native_connection(&target);
    let mut corrupt = get_frame(2, "stable", GROUPS);
    corrupt[4] ^= 0xff;
    s.write_all(&corrupt).unwrap();
    read_until_closed(&mut s, "wrong checksum");
    check(&mut cluster, "a wrong checksum");

    // A sound frame whose kind is unknown: answered with an error, and the connection
    // carries on serving the next request.
    let (mut s, _) = native_connection(&target);
    let mut body = 7u64.to_le_bytes().to_vec();
    body.push(0x77);
    body.extend_from_slice(&0u32.to_le_bytes());
    s.write_all(&frame(&body)).unwrap();
    s.write_all(&get_frame(8, "stable", GROUPS)).unwrap();
    let mut decoder = ResponseDecoder::new(ClientLimits::default());
    let mut answers = Vec::new();
    let mut buf = [0u8; 4096];
    while answers.len() < 2 {
        let n = s.read(&mut buf).expect("answers to both requests");
        assert!(
            n > 0,
            "the server closed the connection after a sound frame"
        );
        decoder.extend(&buf[..n]);
        while let Some(answer) = decoder.next_frame().unwrap() {
            answers.push(answer);
        }
    }
    answers.sort_by_key(|a| a.id);
    assert_eq!(answers[0].id, 7);
    assert!(
        matches!(answers[0].result, Err(ErrorStatus::InvalidArgument(_))),
        "{:?}",
        answers[0].result
    );
    assert_eq!(answers[1].id, 8);
    assert!(answers[1].result.is_ok(), "{:?}", answers[1].result);
    drop(s);
    check(&mut cluster, "an unknown kind");

    // A client that sends requests as fast as it can and never reads the answers: the
    // member must stop reading from it (or close it) rather than buffer without bound, and
    // keep serving everyone else meanwhile.
    let (s, _) = native_connection(&target);
    s.set_write_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let rss_before = rss_kib(cluster.pid(0));
    let flooding = std::thread::spawn(move || {
        let mut s = s;
        let mut batch = Vec::new();
        for id in 0..256u64 {
            batch.extend_from_slice(&get_frame(id, "stable", GROUPS));
        }
        let started = Instant::now();
        let mut sent = 0u64;
        while started.elapsed() < Duration::from_secs(5) {
            match s.write_all(&batch) {
                Ok(()) => sent += batch.len() as u64,
                // Blocked (pushed back) or closed: either is fine.
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
        (s, sent)
    });
    std::thread::sleep(Duration::from_secs(2));
    check(&mut cluster, "a client that never reads (while it floods)");
    let (s, sent) = flooding.join().unwrap();
    let rss_after = rss_kib(cluster.pid(0));
    eprintln!(
        "the non-reading client got {sent} bytes in; member RSS {rss_before} -> {rss_after} KiB"
    );
    assert!(
        rss_after < rss_before + 256 * 1024,
        "the member grew from {rss_before} to {rss_after} KiB for a client that never reads"
    );
    drop(s);
    check(&mut cluster, "a client that never reads");
    cluster.terminate_all();
}

/// The value of `name=` on a `cluster ...` line of `keel bench cluster`.
fn bench_field(line: &str, name: &str) -> String {
    line.split(' ')
        .find_map(|f| f.strip_prefix(name)?.strip_prefix('='))
        .unwrap_or_else(|| panic!("no {name} in {line:?}"))
        .to_owned()
}

/// A bench line that did operations, measured the members' CPU, and met no error.
fn assert_bench_did_work(line: &str) {
    let field = |name: &str| bench_field(line, name);
    assert!(field("ops/s").parse::<f64>().unwrap() > 0.0, "{line}");
    assert!(
        field("cpu_us_per_op").parse::<f64>().unwrap() > 0.0,
        "{line}"
    );
    assert_eq!(field("errors"), "0", "{line}");
}

#[test]
fn bench_cluster_starts_and_stops_its_own_members() {
    let _turn = serial();
    let out = keel(
        &[
            "bench",
            "cluster",
            "--secs",
            "1",
            "--clients",
            "4",
            "--conns",
            "2",
            "--keys",
            "200",
            "--workload",
            "mixed",
            "--groups",
            "4",
            "--shards",
            "2",
        ],
        "",
    );
    let stdout = text(&out.stdout);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(
        !stderr.contains("after SIGTERM"),
        "a member did not exit 0: {stderr}"
    );
    let line = stdout.lines().last().unwrap_or_default();
    let field = |name: &str| bench_field(line, name);
    assert!(
        line.starts_with("cluster api=native nodes=3 clients=4 workload=mixed"),
        "{line}"
    );
    assert_bench_did_work(line);
    assert_eq!(field("groups"), "4", "{line}");
}

#[test]
fn a_member_behind_a_compaction_catches_up_by_snapshot() {
    let _turn = serial();
    // Checkpoints every 40 entries of a group, 10 kept behind: the writes below compact
    // each group's log far past what the killed member holds.
    let mut cluster = Cluster::start_with(
        3,
        &[
            "--snapshot-entries",
            "40",
            "--snapshot-catchup-entries",
            "10",
        ],
    );
    let rt = runtime();
    let victim = 2;
    rt.block_on(async {
        let client = cluster.wait_ready().await;
        client.put("before", "kill").await.unwrap();
        cluster.kill9(victim);
        for i in 0..400u32 {
            client
                .put(format!("snap-{i:04}"), format!("value-{i}"))
                .await
                .unwrap_or_else(|e| panic!("put {i}: {e}{}", cluster.stderr_tails()));
        }
    });
    cluster.spawn(victim);
    let address = cluster.members[victim].client_address.clone();
    let started = Instant::now();
    loop {
        cluster.assert_running();
        let caught_up = (0..400u32).step_by(37).chain([399]).all(|i| {
            read_at(&address, &format!("snap-{i:04}")) == Some(format!("value-{i}").into_bytes())
        });
        if caught_up {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the restarted member did not catch up{}",
            cluster.stderr_tails()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // Every key, from the restarted member's own state machine.
    for i in 0..400u32 {
        assert_eq!(
            read_at(&address, &format!("snap-{i:04}")),
            Some(format!("value-{i}").into_bytes()),
            "snap-{i:04} on the restarted member"
        );
    }
    let log = std::fs::read_to_string(&cluster.members[victim].err_path).unwrap();
    assert!(
        log.contains("snapshot installed"),
        "the restarted member caught up without a snapshot{}",
        cluster.stderr_tails()
    );
    cluster.terminate_all();
}

/// Members whose shards run on tokio-uring's runtime (`--shard-runtime tokio-uring`) serve
/// writes and reads like the default ones.
#[test]
fn members_on_the_tokio_uring_runtime_serve() {
    let _turn = serial();
    let mut cluster = Cluster::start_with(3, &["--shard-runtime", "tokio-uring"]);
    runtime().block_on(cluster.wait_ready());
    let all = cluster.endpoints_flag();
    for i in 0..20 {
        let key = format!("uring-{i}");
        expect(
            &cluster,
            &keel(&["put", "--endpoints", &all, &key, "v"], ""),
            0,
        );
        assert_eq!(
            expect(&cluster, &keel(&["get", "--endpoints", &all, &key], ""), 0),
            "v\n"
        );
    }
}

#[test]
fn bench_cluster_drives_the_etcd_api_of_its_own_members() {
    let _turn = serial();
    let out = keel(
        &[
            "bench",
            "cluster",
            "--api",
            "etcd",
            "--secs",
            "1",
            "--clients",
            "4",
            "--keys",
            "200",
            "--workload",
            "mixed",
            "--groups",
            "2",
            "--shards",
            "1",
        ],
        "",
    );
    let stdout = text(&out.stdout);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    let line = stdout.lines().last().unwrap_or_default();
    let field = |name: &str| bench_field(line, name);
    assert!(
        line.starts_with("cluster api=etcd nodes=3 clients=4 workload=mixed"),
        "{line}"
    );
    assert_bench_did_work(line);
    assert_eq!(field("groups"), "2", "{line}");
    assert_eq!(field("route"), "leader", "{line}");

    // Bad input is an error that names it, never a panic.
    let lease = keel(
        &[
            "bench",
            "cluster",
            "--api",
            "etcd",
            "--workload",
            "get",
            "--read",
            "lease",
        ],
        "",
    );
    assert_eq!(lease.status.code(), Some(2), "{}", text(&lease.stderr));
    assert!(text(&lease.stderr).contains("--read lease"));
    let unreachable = keel(
        &[
            "bench",
            "cluster",
            "--api",
            "etcd",
            "--endpoints",
            "127.0.0.1:1",
            "--secs",
            "1",
        ],
        "",
    );
    assert_eq!(unreachable.status.code(), Some(2));
    assert!(text(&unreachable.stderr).contains("127.0.0.1:1"));
}
