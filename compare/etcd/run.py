#!/usr/bin/env python3
"""Keel and etcd side by side, through the same etcd v3 gRPC client.

Builds keel (release) once, starts a 3-member etcd cluster and a 3-member Keel cluster on
127.0.0.1 (free ports, temporary data directories), and runs the same
`keel bench cluster --api etcd --endpoints ...` workloads against each, alternating which
goes first, for several rounds. Prints the medians, the ratios Keel/etcd and the targets.
Every process and directory it starts is stopped and removed on the way out (normal end,
error, Ctrl-C or SIGTERM).

Both clusters run at once (idle when not measured), so each round measures the two under
the same conditions; the server CPU of each is read from /proc through the bench's
--server-pids.

Usage (from anywhere in the repository):
    compare/etcd/run.py                      # 5 s per run, 3 rounds
    compare/etcd/run.py --secs 2 --rounds 1  # a quick look
Needs python3 (standard library only), cargo, and etcd 3.4+ on PATH (Debian: etcd-server).
"""

import argparse
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))

# Longest wait for a cluster to answer as healthy after start, in seconds.
READY_TIMEOUT_SECS = 60
# Longest wait for a member to exit after SIGTERM before it is killed, in seconds.
STOP_GRACE_SECS = 10
# Most attempts at finding a block of free ports.
PORT_ATTEMPTS_MAX = 64

# (name, bench arguments). Connections: one per member for up to 64 clients, then one per
# 64 clients, the same for both systems.
WORKLOADS = [
    ("put c=1", ["--workload", "put", "--clients", "1", "--conns", "1"]),
    ("put c=16", ["--workload", "put", "--clients", "16", "--conns", "1"]),
    ("put c=256", ["--workload", "put", "--clients", "256", "--conns", "4"]),
    ("get lin c=256", ["--workload", "get", "--read", "linearizable", "--clients", "256",
                       "--conns", "4", "--keys", "10000"]),
    ("txn CAS c=256", ["--workload", "txn", "--clients", "256", "--conns", "4"]),
]

# The metrics of the bench's machine-readable line shown per workload: (field, heading,
# whether more is better).
METRICS = [
    ("ops/s", "ops/s", True),
    ("p50_us", "p50 µs", False),
    ("p99_us", "p99 µs", False),
    ("cpu_us_per_op", "srv cpu µs/op", False),
]


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def free_port_block(span, taken):
    """A port p such that p..p+span are free on 127.0.0.1 and not in `taken`."""
    for _ in range(PORT_ATTEMPTS_MAX):
        held = []
        try:
            first = socket.socket()
            first.bind(("127.0.0.1", 0))
            held.append(first)
            base = first.getsockname()[1]
            if base in taken:
                continue
            ok = True
            for offset in range(1, span):
                port = base + offset
                if port > 65535 or port in taken:
                    ok = False
                    break
                s = socket.socket()
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    s.close()
                    ok = False
                    break
                held.append(s)
            if ok:
                taken.update(range(base, base + span))
                return base
        finally:
            for s in held:
                s.close()
    raise RuntimeError(f"found no {span} consecutive free ports on 127.0.0.1")


class Cluster:
    """Three server processes of one system, their pids, endpoints and files."""

    def __init__(self, name, root):
        self.name = name
        self.dir = os.path.join(root, name)
        os.makedirs(self.dir)
        self.procs = []
        self.endpoints = []
        self.logs = []

    def spawn(self, member, argv):
        err = os.path.join(self.dir, f"{member}.log")
        self.logs.append(err)
        with open(err, "ab") as f:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=f, stderr=f,
                                    start_new_session=True)
        self.procs.append(proc)

    def pids(self):
        return [p.pid for p in self.procs]

    def check_running(self):
        for p, path in zip(self.procs, self.logs):
            if p.poll() is not None:
                tail = open(path, errors="replace").read().splitlines()[-20:]
                raise RuntimeError(f"{self.name} member {p.pid} exited ({p.returncode}):\n  "
                                   + "\n  ".join(tail))

    def stop(self):
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_SECS
        for p in self.procs:
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log(f"{self.name} member {p.pid} still running after SIGTERM; killing it")
                p.kill()
                p.wait()
        self.procs = []


def start_etcd(etcd, root, taken):
    c = Cluster("etcd", root)
    peers = [free_port_block(1, taken) for _ in range(3)]
    clients = [free_port_block(1, taken) for _ in range(3)]
    initial = ",".join(f"e{i + 1}=http://127.0.0.1:{p}" for i, p in enumerate(peers))
    for i in range(3):
        name = f"e{i + 1}"
        peer, client = f"http://127.0.0.1:{peers[i]}", f"http://127.0.0.1:{clients[i]}"
        c.spawn(name, [etcd, "--name", name, "--data-dir", os.path.join(c.dir, name),
                       "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
                       "--listen-client-urls", client, "--advertise-client-urls", client,
                       "--initial-cluster", initial, "--initial-cluster-state", "new",
                       "--initial-cluster-token", "keel-compare", "--logger", "zap"])
        c.endpoints.append(f"127.0.0.1:{clients[i]}")
    return c


def etcd_healthy(c):
    for e in c.endpoints:
        try:
            with urllib.request.urlopen(f"http://{e}/health", timeout=2) as r:
                if b'"health":"true"' not in r.read():
                    return False
        except OSError:
            return False
    return True


def start_keel(keel, root, taken, shards, groups):
    c = Cluster("keel", root)
    peers = [free_port_block(shards, taken) for _ in range(3)]
    clients = [free_port_block(1, taken) for _ in range(3)]
    initial = ",".join(f"m{i + 1}=http://127.0.0.1:{p}" for i, p in enumerate(peers))
    # The three members share this machine's cores: pinning each member's shard s to core
    # s would stack the three replicas of every group on one core, so they are not pinned
    # (as etcd's processes are not).
    for i in range(3):
        name = f"m{i + 1}"
        c.spawn(name, [keel, "server", "--name", name, "--no-pin",
                       "--data-dir", os.path.join(c.dir, name),
                       "--listen-peer-urls", f"http://127.0.0.1:{peers[i]}",
                       "--listen-client-urls", f"http://127.0.0.1:{clients[i]}",
                       "--initial-cluster", initial, "--initial-cluster-state", "new",
                       "--groups", str(groups), "--shards", str(shards)])
        c.endpoints.append(f"127.0.0.1:{clients[i]}")
    return c


def keel_healthy(keel, c):
    r = subprocess.run([keel, "health", "--endpoints", ",".join(c.endpoints)],
                       stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
    return r.returncode == 0


def wait_ready(c, healthy):
    started = time.monotonic()
    while not healthy():
        c.check_running()
        if time.monotonic() - started > READY_TIMEOUT_SECS:
            raise RuntimeError(f"{c.name} was not healthy within {READY_TIMEOUT_SECS} s")
        time.sleep(0.2)
    log(f"{c.name}: 3 members healthy in {time.monotonic() - started:.1f} s "
        f"({','.join(c.endpoints)})")


def bench(keel, c, args, secs):
    """Runs one bench; returns its machine-readable fields."""
    argv = [keel, "bench", "cluster", "--api", "etcd", "--endpoints", ",".join(c.endpoints),
            "--server-pids", ",".join(map(str, c.pids())), "--secs", str(secs)] + args
    r = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True)
    line = next((l for l in reversed(r.stdout.splitlines())
                 if l.startswith("cluster api=etcd ")), None)
    if r.returncode != 0 or line is None:
        c.check_running()
        raise RuntimeError(f"{' '.join(argv)} exited {r.returncode}:\n{r.stdout}{r.stderr}")
    fields = dict(f.split("=", 1) for f in line.split()[2:] if "=" in f)
    if fields.get("errors") != "0":
        log(f"  {c.name}: {fields.get('errors')} errors: {r.stderr.strip()[-300:]}")
    return fields


def interrupted(_signum, _frame):
    raise KeyboardInterrupt


def number(x):
    try:
        return float(x)
    except (TypeError, ValueError):
        return None


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def show(x):
    if x is None:
        return "n/a"
    if x >= 100:
        return f"{x:,.0f}"
    return f"{x:.1f}"


def ratio(k, e):
    return k / e if k is not None and e else None


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--secs", type=float, default=5.0, help="seconds per bench run (5)")
    ap.add_argument("--rounds", type=int, default=3, help="rounds, alternating order (3)")
    ap.add_argument("--etcd", default="etcd", help="the etcd binary (etcd on PATH)")
    ap.add_argument("--keel", help="a keel binary to use instead of building one")
    ap.add_argument("--groups", type=int, default=8, help="Keel's raft groups (8)")
    ap.add_argument("--shards", type=int, default=os.cpu_count() or 1,
                    help="Keel's shards per member (one per core)")
    ap.add_argument("--size", type=int, default=128, help="bytes per value (128)")
    ap.add_argument("--route", choices=["leader", "spread"], default="leader",
                    help="the bench's --route: each request to its key's leader (default), "
                         "or connections spread over the members as etcd's benchmark does")
    ap.add_argument("--keep", action="store_true", help="keep the data and logs")
    a = ap.parse_args()
    if not (0 < a.secs <= 3600) or not (1 <= a.rounds <= 100):
        ap.error("--secs must be within (0, 3600] and --rounds within [1, 100]")
    if not (1 <= a.groups <= 65536) or not (1 <= a.shards <= 64) or not (1 <= a.size):
        ap.error("--groups within [1, 65536], --shards within [1, 64], --size at least 1")
    etcd = shutil.which(a.etcd)
    if etcd is None:
        sys.exit(f"run.py: {a.etcd} not found (Debian: apt-get install etcd-server)")
    version = subprocess.run([etcd, "--version"], capture_output=True, text=True).stdout
    keel = a.keel
    if keel is None:
        log("building keel (release) ...")
        subprocess.run(["cargo", "build", "--release", "--bin", "keel"], cwd=ROOT, check=True)
        keel = os.path.join(ROOT, "target", "release", "keel")

    # SIGTERM unwinds like Ctrl-C, through the cleanup below.
    signal.signal(signal.SIGTERM, interrupted)
    root = tempfile.mkdtemp(prefix="keel-compare-etcd-")
    clusters = []
    try:
        taken = set()
        common = ["--size", str(a.size), "--route", a.route]
        e = start_etcd(etcd, root, taken)
        clusters.append(e)
        k = start_keel(keel, root, taken, a.shards, a.groups)
        clusters.append(k)
        wait_ready(e, lambda: etcd_healthy(e))
        wait_ready(k, lambda: keel_healthy(keel, k))
        # A short warm-up each (connections, leaders known everywhere, caches).
        for c in (e, k):
            bench(keel, c, ["--workload", "put", "--clients", "16"] + common, 1)
        results = {(w, s): [] for w, _ in WORKLOADS for s in ("etcd", "keel")}
        for r in range(a.rounds):
            for name, args in WORKLOADS:
                order = (e, k) if r % 2 == 0 else (k, e)
                for c in order:
                    f = bench(keel, c, args + common, a.secs)
                    results[(name, c.name)].append(f)
                    log(f"round {r + 1}/{a.rounds} {name:<14} {c.name:<5} ops/s={f['ops/s']:>7} "
                        f"p50_us={f['p50_us']:>6} p99_us={f['p99_us']:>6} "
                        f"cpu_us_per_op={f['cpu_us_per_op']} errors={f['errors']}")
        report(a, version, results)
    except KeyboardInterrupt:
        log("interrupted; cleaning up")
        return 130
    except (RuntimeError, subprocess.CalledProcessError, OSError) as err:
        log(f"run.py: {err}")
        return 1
    finally:
        for c in clusters:
            c.stop()
        if a.keep:
            log(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    return 0


def report(a, version, results):
    med = {}
    for (w, s), runs in results.items():
        for field, _, _ in METRICS:
            med[(w, s, field)] = median([number(f.get(field)) for f in runs])
    etcd_version = version.splitlines()[0] if version else "etcd"
    print(f"\nKeel vs {etcd_version}: 3 members each on 127.0.0.1, the same client "
          f"(keel bench cluster --api etcd, route {a.route}), {a.size} B values, "
          f"{a.secs:g} s per run, median of {a.rounds} round(s); Keel --groups {a.groups} "
          f"--shards {a.shards}")
    head = f"{'workload':<15}{'metric':<15}{'etcd':>11}{'keel':>11}{'keel/etcd':>11}"
    print(head)
    print("-" * len(head))
    for w, _ in WORKLOADS:
        for field, title, _ in METRICS:
            ev, kv = med[(w, "etcd", field)], med[(w, "keel", field)]
            rt = ratio(kv, ev)
            print(f"{w:<15}{title:<15}{show(ev):>11}{show(kv):>11}"
                  f"{(f'{rt:.2f}' if rt is not None else 'n/a'):>11}")
    print("\ntargets (same client, same machine):")
    targets = [
        ("puts/s at 256 clients >= 5x etcd's", ratio(med[("put c=256", "keel", "ops/s")],
                                                 med[("put c=256", "etcd", "ops/s")]),
         lambda r: r >= 5, "x"),
        ("put p50 at 1 client <= 1/3 of etcd's", ratio(med[("put c=1", "keel", "p50_us")],
                                                   med[("put c=1", "etcd", "p50_us")]),
         lambda r: r <= 1 / 3, "x"),
        ("server CPU per put (256 clients) <= 1/10 of etcd's",
         ratio(med[("put c=256", "keel", "cpu_us_per_op")],
               med[("put c=256", "etcd", "cpu_us_per_op")]),
         lambda r: r <= 0.1, "x"),
    ]
    for name, r, met, _ in targets:
        verdict = "n/a" if r is None else ("met" if met(r) else "not met")
        shown = "n/a" if r is None else f"{r:.2f}"
        print(f"  {name:<52} keel/etcd = {shown:>6}  {verdict}")


if __name__ == "__main__":
    sys.exit(main())
