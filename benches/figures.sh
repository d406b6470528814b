#!/usr/bin/env bash
# Reproduces the write-ahead log figures of README.md: every comparison runs side by side,
# alternating the two systems, ROUNDS times; the summary gives the median of each value and
# of each ratio. Needs a release build of `keel` (and of compare/raft-engine for the
# comparison with raft-engine, built on first use). Usage: benches/figures.sh [ROUNDS] [SECS]
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-5}
secs=${2:-5}
cargo build --release -q
keel=target/release/keel
out=$(mktemp)
trap 'rm -f "$out"' EXIT

median() { sort -n | awk '{a[NR]=$1} END {if (NR) print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
field() { grep -o "$1=[0-9.]*" | cut -d= -f2; }

dd_mbps() { # the disk's sequential write bandwidth now: 1 GiB in 4 MiB O_DIRECT writes
    dd if=/dev/zero of=target/dd.bin bs=4M count=256 oflag=direct conv=fdatasync 2>&1 |
        awk '/copied/ {print $(NF-1) * ($NF == "GB/s" ? 1000 : 1)}'
    rm -f target/dd.bin
}

run() { # label, arguments of keel bench wal
    local label=$1; shift
    for _ in $(seq "$rounds"); do
        "$keel" bench wal --secs "$secs" "$@" 2>/dev/null | grep -E '^(wal|baseline|ratio)' |
            sed "s/^/$label /"
    done | tee -a "$out"
}
echo "== one appender, 128 B, synced, beside pwrite + fdatasync"
run single --baseline
echo "== 16 appenders, 128 B, synced"
run sixteen --writers 16
echo "== 16 async tasks on one thread, 128 B, synced"
run tasks --writers 16 --tasks
run_vs_disk() { # label, arguments: each round measures the disk with dd, then the log
    local label=$1; shift
    for _ in $(seq "$rounds"); do
        local disk wal
        disk=$(dd_mbps)
        wal=$("$keel" bench wal --secs "$secs" "$@" 2>/dev/null | grep '^wal')
        echo "$label $wal"
        echo "$label disk MBps=$disk ratio=$(echo "$wal" | field MB/s | awk -v d="$disk" '{printf "%.2f", $1 / d}')"
    done | tee -a "$out"
}
echo "== large appends: 64 x 4 KiB, 1 and 4 appenders, log purged behind (recycled segments),"
echo "   each round beside dd's sequential O_DIRECT bandwidth"
run_vs_disk large1 --batch 64 --size 4096 --keep-segments 4
run_vs_disk large4 --batch 64 --size 4096 --writers 4 --keep-segments 4
echo "== large appends without purging (every segment zero-filled first)"
run_vs_disk large4fresh --batch 64 --size 4096 --writers 4

if [ -d compare/raft-engine ]; then
    echo "== keel-wal vs raft-engine 0.4, 16 writer threads over 256 groups, 128 B, synced"
    (cd compare/raft-engine && cargo build --release -q)
    for i in $(seq "$rounds"); do
        first=$([ $((i % 2)) = 1 ] && echo raft-engine || echo keel)
        compare/raft-engine/target/release/keel-compare-raft-engine --secs "$secs" \
            --first "$first" | sed 's/^/re16 /'
    done | tee -a "$out"
fi

echo
echo "== medians over $rounds rounds"
summary() { # label, line kind, fields...
    local label=$1 kind=$2; shift 2
    local line="$label $kind:"
    for f in "$@"; do
        line+=" $f=$(grep -F "$label $kind" "$out" | field "$f" | median)"
    done
    echo "$line"
}
summary single wal appends/s p50_us p99_us
summary single baseline appends/s p50_us p99_us
summary single ratio records/s p50 p99
summary sixteen wal records/s p50_us p99_us
summary tasks wal records/s p50_us p99_us
for l in large1 large4 large4fresh; do
    summary $l wal MB/s p50_us p99_us
    summary $l disk MBps ratio
done
if grep -q '^re16' "$out"; then
    summary re16 'compare impl=raft-engine' writes/s p50_us p99_us
    summary re16 'compare impl=keel-wal ' writes/s p50_us p99_us
    summary re16 'compare impl=keel-wal-tasks' writes/s p50_us p99_us
    summary re16 'ratio keel/' writes/s p50 p99
    summary re16 'ratio keel-tasks/' writes/s p50 p99
fi
