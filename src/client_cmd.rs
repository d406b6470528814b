//! `keel put|get|del|txn|health`: one request to a running cluster over the native protocol,
//! through keel-client, in the manner of etcdctl.
//!
//! Each command builds a current-thread tokio runtime, connects a [`Client`] to the
//! endpoints (it learns the group map from the first that answers and then sends each
//! request to its group's leader), runs, and maps the outcome to the exit codes of the CLI:
//! 0 success, 1 the answer is "no" (a key absent, a group without a leader), 2 bad arguments
//! or an error (every error names the endpoint that failed).

use std::ffi::OsString;
use std::io::{Read, Write};
use std::os::unix::ffi::OsStringExt;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use keel_client::{
    Client, ClientOptions, GetRequest, KeyValue, OpResponse, ReadConsistency, TxnResponse,
};

use crate::txn_script;

/// The endpoints and timeouts every client command takes.
#[derive(Args, Debug, Clone)]
pub struct ConnectArgs {
    /// Members to reach the cluster through, comma-separated: `host:port` or
    /// `http://host:port`. Any one that answers is enough.
    #[arg(long, default_value = "127.0.0.1:2379", value_delimiter = ',')]
    pub endpoints: Vec<String>,
    /// Longest wait for a connection to one endpoint, in seconds.
    #[arg(long, default_value_t = 2.0)]
    pub dial_timeout: f64,
    /// Longest wait for the whole command, retries included, in seconds.
    #[arg(long, default_value_t = 5.0)]
    pub command_timeout: f64,
}

impl ConnectArgs {
    fn dial(&self) -> Result<Duration, String> {
        seconds("--dial-timeout", self.dial_timeout)
    }

    fn command(&self) -> Result<Duration, String> {
        seconds("--command-timeout", self.command_timeout)
    }

    /// Client options within these timeouts: each attempt may take the whole command
    /// timeout, and the command timeout bounds the retries.
    pub fn options(&self) -> Result<ClientOptions, String> {
        let options = ClientOptions {
            connect_timeout: self.dial()?,
            request_timeout: self.command()?,
            ..ClientOptions::default()
        };
        options.validate()?;
        Ok(options)
    }

    fn endpoints(&self) -> Vec<&str> {
        self.endpoints.iter().map(String::as_str).collect()
    }

    /// The endpoints as the user gave them, for messages.
    fn shown(&self) -> String {
        self.endpoints.join(",")
    }
}

fn seconds(flag: &str, secs: f64) -> Result<Duration, String> {
    if secs.is_finite() && secs > 0.0 && secs <= 3600.0 {
        Ok(Duration::from_secs_f64(secs))
    } else {
        Err(format!(
            "{flag} must be within (0, 3600] seconds, got {secs}"
        ))
    }
}

/// How `keel get` reads.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum ConsistencyArg {
    /// Confirmed by the group's leader with a quorum: sees every acknowledged write.
    Linearizable,
    /// Served by the leader under its lease, without a quorum round trip.
    Lease,
    /// Served by whichever member answers, from its own state: may be stale.
    Serializable,
}

impl From<ConsistencyArg> for ReadConsistency {
    fn from(c: ConsistencyArg) -> ReadConsistency {
        match c {
            ConsistencyArg::Linearizable => ReadConsistency::Linearizable,
            ConsistencyArg::Lease => ReadConsistency::Lease,
            ConsistencyArg::Serializable => ReadConsistency::Serializable,
        }
    }
}

/// `keel put KEY VALUE`.
#[derive(Args, Debug)]
pub struct PutArgs {
    #[command(flatten)]
    connect: ConnectArgs,
    /// The key (any bytes the shell can pass).
    key: OsString,
    /// The value.
    value: OsString,
}

/// `keel get KEY`.
#[derive(Args, Debug)]
pub struct GetArgs {
    #[command(flatten)]
    connect: ConnectArgs,
    /// How the read is served.
    #[arg(long, value_enum, default_value_t = ConsistencyArg::Linearizable)]
    consistency: ConsistencyArg,
    /// The key.
    key: OsString,
}

/// `keel del KEY`.
#[derive(Args, Debug)]
pub struct DelArgs {
    #[command(flatten)]
    connect: ConnectArgs,
    /// The key.
    key: OsString,
}

/// `keel txn`, the script on stdin.
#[derive(Args, Debug)]
pub struct TxnArgs {
    #[command(flatten)]
    connect: ConnectArgs,
}

/// `keel health`.
#[derive(Args, Debug)]
pub struct HealthArgs {
    #[command(flatten)]
    connect: ConnectArgs,
}

pub const TXN_HELP: &str = "\
Reads a transaction from stdin, in etcdctl's txn format: compares, a blank line, the requests \
run when every compare holds, a blank line, the requests run otherwise.

  value(\"{user42}/balance\") = \"10\"
  version(\"{user42}/lock\") = \"0\"

  put {user42}/balance \"0\"
  put {user42}/spent 10

  get {user42}/balance

Compares: TARGET(\"KEY\") OP \"VALUE\" with TARGET value, version, create or mod (revisions) \
and OP =, !=, > or <. Requests: put KEY VALUE, get KEY [RANGE_END], del KEY. Words are bare \
or double-quoted with the escapes \\\" \\\\ \\n \\t \\r \\xHH; lines starting with # are \
skipped. Every key compared or written must share one group: give them a common {hash tag}.

Prints SUCCESS or FAILURE, then each request's result after a blank line (put: OK; del: the \
number deleted; get: key and value lines). Exit 0 either way.";

pub fn put(args: &PutArgs) -> Result<ExitCode, String> {
    let (key, value) = (bytes(&args.key), bytes(&args.value));
    with_client(&args.connect, |client| async move {
        client.put(key, value).await.map_err(|e| e.to_string())?;
        println!("OK");
        Ok(ExitCode::SUCCESS)
    })
}

pub fn get(args: &GetArgs) -> Result<ExitCode, String> {
    let key = bytes(&args.key);
    let consistency = args.consistency.into();
    with_client(&args.connect, |client| async move {
        let request = GetRequest {
            consistency,
            ..GetRequest::new(key.clone())
        };
        let got = client
            .get_request(request)
            .await
            .map_err(|e| e.to_string())?;
        match got.kv {
            Some(kv) => {
                write_line(&kv.value)?;
                Ok(ExitCode::SUCCESS)
            }
            None => {
                eprintln!("keel: key {} not found", show_bytes(&key));
                Ok(ExitCode::from(1))
            }
        }
    })
}

pub fn del(args: &DelArgs) -> Result<ExitCode, String> {
    let key = bytes(&args.key);
    with_client(&args.connect, |client| async move {
        let deleted = client.delete(key).await.map_err(|e| e.to_string())?;
        println!("{}", deleted.deleted);
        Ok(ExitCode::SUCCESS)
    })
}

pub fn txn(args: &TxnArgs) -> Result<ExitCode, String> {
    let mut text = String::new();
    std::io::stdin()
        .read_to_string(&mut text)
        .map_err(|e| format!("reading the transaction from stdin: {e}"))?;
    let txn = txn_script::parse(&text).map_err(|e| format!("transaction on stdin, {e}"))?;
    with_client(&args.connect, |client| async move {
        let response = client.txn(txn).await.map_err(|e| e.to_string())?;
        print_txn(&response)?;
        Ok(ExitCode::SUCCESS)
    })
}

fn print_txn(response: &TxnResponse) -> Result<(), String> {
    println!(
        "{}",
        if response.succeeded {
            "SUCCESS"
        } else {
            "FAILURE"
        }
    );
    for op in &response.responses {
        println!();
        match op {
            OpResponse::Put { .. } => println!("OK"),
            OpResponse::Delete { deleted, .. } => println!("{deleted}"),
            OpResponse::Range { kvs, .. } => {
                for KeyValue { key, value, .. } in kvs {
                    write_line(key)?;
                    write_line(value)?;
                }
            }
        }
    }
    Ok(())
}

/// `keel health`: which endpoints answer, then for each group its leader and a linearizable
/// read through it (a leader that a member names but that cannot reach a quorum fails the
/// read). Exit 0 when every group answered.
pub fn health(args: &HealthArgs) -> Result<ExitCode, String> {
    let connect = args.connect.clone();
    let options = connect.options()?;
    runtime()?.block_on(async move {
        let deadline = connect.command()?;
        for endpoint in connect.endpoints() {
            let started = Instant::now();
            let alone =
                tokio::time::timeout(deadline, Client::connect_with(&[endpoint], options.clone()))
                    .await;
            match alone {
                Ok(Ok(_)) => println!(
                    "{endpoint}: answered in {:.1} ms",
                    started.elapsed().as_secs_f64() * 1e3
                ),
                Ok(Err(e @ keel_client::Error::InvalidEndpoint { .. })) => {
                    return Err(e.to_string());
                }
                Ok(Err(e)) => println!("{endpoint}: unreachable: {e}"),
                Err(_) => println!("{endpoint}: unreachable: no answer within {deadline:?}"),
            }
        }
        let client = match tokio::time::timeout(
            deadline,
            Client::connect_with(&connect.endpoints(), options),
        )
        .await
        {
            Ok(Ok(client)) => client,
            Ok(Err(e)) => {
                println!(
                    "unhealthy: cannot reach the cluster at {}: {e}",
                    connect.shown()
                );
                return Ok(ExitCode::from(1));
            }
            Err(_) => {
                println!(
                    "unhealthy: no member of {} answered within {deadline:?}",
                    connect.shown()
                );
                return Ok(ExitCode::from(1));
            }
        };
        // Member ids to client addresses, for the report; the probes find the leaders.
        let members: std::collections::HashMap<u64, String> = match client.status().await {
            Ok(status) => status
                .members
                .into_iter()
                .map(|m| (m.id, m.client_address))
                .collect(),
            Err(_) => Default::default(),
        };
        let groups = client.groups();
        let mut probes = tokio::task::JoinSet::new();
        for group in 0..groups {
            let client = client.clone();
            probes.spawn(async move {
                let started = Instant::now();
                let read = tokio::time::timeout(deadline, client.get(probe_key(group, groups)));
                (group, started, read.await)
            });
        }
        let mut lines = Vec::new();
        let mut sick = Vec::new();
        while let Some(joined) = probes.join_next().await {
            let (group, started, read) =
                joined.unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
            let line = match read {
                Ok(Ok(got)) => format!(
                    "group {group}: leader member {} at {}, linearizable read in {:.1} ms",
                    got.header.member_id,
                    members
                        .get(&got.header.member_id)
                        .map_or("an unknown address", String::as_str),
                    started.elapsed().as_secs_f64() * 1e3
                ),
                Ok(Err(e)) => {
                    sick.push(group);
                    format!("group {group}: no leader: {e}")
                }
                Err(_) => {
                    sick.push(group);
                    format!("group {group}: no leader: no answer within {deadline:?}")
                }
            };
            lines.push((group, line));
        }
        lines.sort();
        for (_, line) in lines {
            println!("{line}");
        }
        sick.sort_unstable();
        if sick.is_empty() {
            println!("healthy: every one of {groups} groups has a leader");
            Ok(ExitCode::SUCCESS)
        } else {
            println!(
                "unhealthy: {} of {groups} groups without a leader: {sick:?}",
                sick.len()
            );
            Ok(ExitCode::from(1))
        }
    })
}

/// A key of `group`: the first `health/N` that hashes there. Reading it (present or not)
/// goes through the group's leader.
fn probe_key(group: u32, groups: u32) -> Vec<u8> {
    (0u64..)
        .map(|n| format!("health/{n}").into_bytes())
        .find(|key| keel_client::group_of(key, groups) == group)
        .expect("every group of a finite count is hit by some key")
}

/// Runs `body` with a client connected to the endpoints, within the command timeout.
fn with_client<F, Fut>(connect: &ConnectArgs, body: F) -> Result<ExitCode, String>
where
    F: FnOnce(Client) -> Fut,
    Fut: std::future::Future<Output = Result<ExitCode, String>>,
{
    let options = connect.options()?;
    let deadline = connect.command()?;
    let endpoints = connect.endpoints();
    runtime()?.block_on(async {
        let work = async {
            let client = Client::connect_with(&endpoints, options)
                .await
                .map_err(|e| format!("cannot reach the cluster at {}: {e}", connect.shown()))?;
            body(client).await
        };
        tokio::time::timeout(deadline, work)
            .await
            .unwrap_or_else(|_| {
                Err(format!(
                    "no answer from the cluster at {} within {deadline:?} (--command-timeout)",
                    connect.shown()
                ))
            })
    })
}

fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("starting the async runtime: {e}"))
}

fn bytes(arg: &OsString) -> Vec<u8> {
    arg.clone().into_vec()
}

/// Writes raw bytes and a newline to stdout: values need not be UTF-8.
fn write_line(bytes: &[u8]) -> Result<(), String> {
    let mut out = std::io::stdout().lock();
    out.write_all(bytes)
        .and_then(|()| out.write_all(b"\n"))
        .map_err(|e| format!("writing to stdout: {e}"))
}

/// A key for a message: as text when it is UTF-8, escaped otherwise.
fn show_bytes(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(s) => format!("{s:?}"),
        Err(_) => format!("{:?}", bytes.escape_ascii().to_string()),
    }
}
