//! A cluster of `keel server` child processes on 127.0.0.1, for `keel bench cluster`.
//!
//! Ports are found free by binding port 0; each member's peer port is the first of a block
//! of `shards` free ports, since shard `s` listens on the peer port + `s`. The listeners that
//! found them are held until every port is chosen (so that no two members get the same) and
//! closed just before the members start; another process could take a port in between,
//! which start-up then reports with the member's stderr.
//!
//! Each member writes its data to `DIR/<name>/` and its stdout and stderr to
//! `DIR/<name>.out` and `DIR/<name>.err` (files, not pipes, so that a member never blocks
//! on output nobody reads). Dropping the cluster kills members still running.

use std::fs::File;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use keel_client::{Client, ClientOptions};

/// Most attempts at finding a block of free ports for one member.
const PORT_ATTEMPTS_MAX: usize = 64;

/// Lines of a member's stderr shown when start-up fails.
const STDERR_TAIL_LINES: usize = 20;

/// How to start the members.
#[derive(Clone, Debug)]
pub struct ClusterSpec {
    /// The `keel` binary (whose `server` subcommand runs a member).
    pub exe: PathBuf,
    /// Members, named m1, m2, ...
    pub nodes: usize,
    /// `--groups`.
    pub groups: u32,
    /// `--shards`, or the server's default (one per core) when `None`.
    pub shards: Option<u32>,
}

struct Member {
    name: String,
    /// The `keel server` arguments, to start it again the same way.
    args: Vec<String>,
    client_address: String,
    child: Option<Child>,
    err_path: PathBuf,
}

/// Running members and where they keep their files.
pub struct LocalCluster {
    dir: PathBuf,
    exe: PathBuf,
    members: Vec<Member>,
}

impl LocalCluster {
    /// Chooses ports, then starts every member in `dir` (which must exist).
    pub fn start(spec: &ClusterSpec, dir: &Path) -> Result<LocalCluster, String> {
        if spec.nodes == 0 {
            return Err("--nodes must be at least 1".into());
        }
        // A member uses as many peer ports as it has shards; by default one per core, as
        // the server counts them on this same machine.
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let span = spec
            .shards
            .map_or(cores, |s| usize::try_from(s).unwrap_or(usize::MAX))
            .max(1);
        let mut held = Vec::new();
        let mut peer_ports = Vec::new();
        let mut client_ports = Vec::new();
        for _ in 0..spec.nodes {
            let (port, listeners) = free_port_block(span)?;
            peer_ports.push(port);
            held.extend(listeners);
            let (port, listeners) = free_port_block(1)?;
            client_ports.push(port);
            held.extend(listeners);
        }
        let names: Vec<String> = (1..=spec.nodes).map(|i| format!("m{i}")).collect();
        let initial_cluster = names
            .iter()
            .zip(&peer_ports)
            .map(|(name, port)| format!("{name}=http://127.0.0.1:{port}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut members = Vec::new();
        for ((name, peer), client) in names.iter().zip(&peer_ports).zip(&client_ports) {
            let mut args = vec![
                "server".to_owned(),
                "--name".to_owned(),
                name.clone(),
                "--data-dir".to_owned(),
                dir.join(name).display().to_string(),
                "--listen-peer-urls".to_owned(),
                format!("http://127.0.0.1:{peer}"),
                "--listen-client-urls".to_owned(),
                format!("http://127.0.0.1:{client}"),
                "--initial-cluster".to_owned(),
                initial_cluster.clone(),
                "--initial-cluster-state".to_owned(),
                "new".to_owned(),
                "--groups".to_owned(),
                spec.groups.to_string(),
            ];
            if let Some(shards) = spec.shards {
                args.extend(["--shards".to_owned(), shards.to_string()]);
            }
            // The members share this machine's cores: pinned, each member's shard s would
            // sit on core s, stacking the replicas of every group on one core.
            args.push("--no-pin".to_owned());
            members.push(Member {
                name: name.clone(),
                args,
                client_address: format!("127.0.0.1:{client}"),
                child: None,
                err_path: dir.join(format!("{name}.err")),
            });
        }
        drop(held);
        let mut cluster = LocalCluster {
            dir: dir.to_path_buf(),
            exe: spec.exe.clone(),
            members,
        };
        for i in 0..cluster.members.len() {
            cluster.spawn(i)?;
        }
        Ok(cluster)
    }

    fn spawn(&mut self, index: usize) -> Result<(), String> {
        let member = &mut self.members[index];
        let out_path = self.dir.join(format!("{}.out", member.name));
        let open = |path: &Path| {
            File::options()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| format!("creating {}: {e}", path.display()))
        };
        let child = Command::new(&self.exe)
            .args(&member.args)
            .stdin(Stdio::null())
            .stdout(open(&out_path)?)
            .stderr(open(&member.err_path)?)
            .spawn()
            .map_err(|e| {
                format!(
                    "starting member {} ({} server): {e}",
                    member.name,
                    self.exe.display()
                )
            })?;
        member.child = Some(child);
        Ok(())
    }

    /// The members' client addresses, `host:port`.
    pub fn endpoints(&self) -> Vec<String> {
        self.members
            .iter()
            .map(|m| m.client_address.clone())
            .collect()
    }

    /// The process ids of the members running.
    pub fn pids(&self) -> Vec<u32> {
        self.members
            .iter()
            .filter_map(|m| m.child.as_ref().map(Child::id))
            .collect()
    }

    /// Waits until a status request answers with a leader for every group and with every
    /// member's client address: until a member has learned the others' addresses it
    /// answers "not the leader" without naming the leader, and keel-client then asks only
    /// the members it knows of. Fails at once when a member exits, and after `timeout`,
    /// with the members' stderr.
    pub async fn wait_ready(&mut self, timeout: Duration) -> Result<Client, String> {
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
            self.check_running()?;
            let last = match Client::connect_with(&endpoints, options.clone()).await {
                Ok(client) => match client.status().await {
                    Ok(status)
                        if status.leaders.iter().all(Option::is_some)
                            && status.members.len() == self.members.len() =>
                    {
                        return Ok(client);
                    }
                    Ok(status) => {
                        let without = status.leaders.iter().filter(|l| l.is_none()).count();
                        format!(
                            "{without} of {} groups without a leader, {} of {} members' \
                             client addresses known",
                            status.groups,
                            status.members.len(),
                            self.members.len()
                        )
                    }
                    Err(e) => e.to_string(),
                },
                Err(e) => e.to_string(),
            };
            if started.elapsed() >= timeout {
                return Err(format!(
                    "the cluster was not ready within {timeout:?} (last: {last}){}",
                    self.stderr_tails()
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// An error naming every member that has exited, with its stderr.
    fn check_running(&mut self) -> Result<(), String> {
        let mut exited = Vec::new();
        for m in &mut self.members {
            if let Some(child) = &mut m.child {
                if let Ok(Some(status)) = child.try_wait() {
                    exited.push(format!("member {} exited ({status})", m.name));
                    m.child = None;
                }
            }
        }
        if exited.is_empty() {
            Ok(())
        } else {
            Err(format!("{}{}", exited.join("; "), self.stderr_tails()))
        }
    }

    /// The shards' write batching over the members' lives, summed from the line each shard
    /// logs when it stops: (durable writes — the WALs' flushes —, groups in them, entries in
    /// them). `None` when no
    /// member logged one (read it after [`LocalCluster::stop`]).
    pub fn batching(&self) -> Option<(u64, u64, u64)> {
        let mut sum = (0u64, 0u64, 0u64);
        let mut found = false;
        for m in &self.members {
            let text = std::fs::read_to_string(&m.err_path).unwrap_or_default();
            for line in text.lines().filter(|l| l.contains("shard write batching")) {
                let field = |name: &str| {
                    line.split_whitespace()
                        .find_map(|w| w.strip_prefix(name)?.strip_prefix('='))
                        .and_then(|v| v.parse::<u64>().ok())
                };
                // The WAL's flushes when logged (staged appends can share one), else the
                // staged appends.
                let writes = field("durable_writes").or_else(|| field("writes"));
                if let (Some(w), Some(g), Some(e)) =
                    (writes, field("groups_written"), field("entries_written"))
                {
                    sum = (sum.0 + w, sum.1 + g, sum.2 + e);
                    found = true;
                }
            }
        }
        found.then_some(sum)
    }

    /// The last lines of every member's stderr, to append to an error.
    fn stderr_tails(&self) -> String {
        let mut out = String::new();
        for m in &self.members {
            let text = std::fs::read_to_string(&m.err_path).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let tail = &lines[lines.len().saturating_sub(STDERR_TAIL_LINES)..];
            // Not the file's path: the directory is removed when the run ends, unless kept.
            out.push_str(&format!(
                "\n--- {} stderr, last {} lines:",
                m.name,
                tail.len()
            ));
            for line in tail {
                out.push_str("\n  ");
                out.push_str(line);
            }
        }
        out
    }

    /// Stops every member with SIGTERM, then SIGKILL for those still running after `grace`.
    /// Returns each member's name and exit status, or an error if one could not be reaped.
    pub fn stop(&mut self, grace: Duration) -> Result<Vec<(String, ExitStatus)>, String> {
        for m in &self.members {
            if let Some(child) = &m.child {
                signal(child, libc::SIGTERM);
            }
        }
        let deadline = Instant::now() + grace;
        let mut statuses = Vec::new();
        for m in &mut self.members {
            let Some(mut child) = m.child.take() else {
                continue;
            };
            let status = loop {
                match child.try_wait() {
                    Ok(Some(status)) => break status,
                    Ok(None) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    Ok(None) => {
                        eprintln!(
                            "keel: member {} still running {grace:?} after SIGTERM; killing it",
                            m.name
                        );
                        let _ = child.kill();
                        break child
                            .wait()
                            .map_err(|e| format!("waiting for member {}: {e}", m.name))?;
                    }
                    Err(e) => return Err(format!("waiting for member {}: {e}", m.name)),
                }
            };
            statuses.push((m.name.clone(), status));
        }
        Ok(statuses)
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        for m in &mut self.members {
            if let Some(mut child) = m.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// Sends `sig` to a child not yet reaped.
fn signal(child: &Child, sig: libc::c_int) {
    let Ok(pid) = libc::pid_t::try_from(child.id()) else {
        return;
    };
    // SAFETY: kill(2) touches no memory of ours. The pid is our child's and the child has not
    // been reaped (we hold its `Child`, and waiting takes it out of the member), so the pid
    // cannot have been reused by another process.
    unsafe {
        libc::kill(pid, sig);
    }
}

/// A port `p` such that `p..p + span` are all free on 127.0.0.1, with the listeners that
/// hold them.
fn free_port_block(span: usize) -> Result<(u16, Vec<TcpListener>), String> {
    for _ in 0..PORT_ATTEMPTS_MAX {
        let first = TcpListener::bind("127.0.0.1:0")
            .map_err(|e| format!("binding a free port on 127.0.0.1: {e}"))?;
        let base = first
            .local_addr()
            .map_err(|e| format!("reading a bound port: {e}"))?
            .port();
        let mut held = vec![first];
        for offset in 1..span {
            let Some(port) = u16::try_from(offset).ok().and_then(|o| base.checked_add(o)) else {
                break;
            };
            match TcpListener::bind(("127.0.0.1", port)) {
                Ok(l) => held.push(l),
                Err(_) => break,
            }
        }
        if held.len() == span {
            return Ok((base, held));
        }
    }
    Err(format!(
        "found no {span} consecutive free ports on 127.0.0.1 in {PORT_ATTEMPTS_MAX} attempts"
    ))
}
