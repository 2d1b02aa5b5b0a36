#!/usr/bin/env bash
# Latch next to etcd, on this machine, in one run: a 3-member etcd cluster and a 3-member Latch
# cluster on 127.0.0.1 (distinct ports, fsync on for both, data dirs on the same disk), the same
# load generator (`latch bench`, whose etcd target uses the etcd-client crate) against both,
# alternating, ROUNDS rounds at each client count. Writes docs/benchmarks.md with the medians
# and the ratio Latch / etcd, the machine, the versions and the exact commands. Stops every
# process it started, by pid.
#
#   bench/compare-etcd.sh                       # defaults below
#   ROUNDS=1 DURATION=3s CLIENTS="1 16" bench/compare-etcd.sh
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
ROUNDS=${ROUNDS:-3}
CLIENTS=${CLIENTS:-"1 16 256"}
DURATION=${DURATION:-5s}
OUT=${OUT:-docs/benchmarks.md}

need_apt=()
command -v etcd >/dev/null 2>&1 || need_apt+=(etcd-server)
command -v etcdctl >/dev/null 2>&1 || need_apt+=(etcd-client)
command -v protoc >/dev/null 2>&1 || need_apt+=(protobuf-compiler)
if ((${#need_apt[@]})); then
  echo "installing ${need_apt[*]} from Debian's packages"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

echo "building latch (release, with the etcd target)"
cargo build --release --features etcd --bin latch
LATCH=${CARGO_TARGET_DIR:-$ROOT/target}/release/latch

WORK=$(mktemp -d "${TMPDIR:-/var/tmp}/latch-vs-etcd.XXXXXX")
PIDS=()
stop_all() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
}
trap stop_all EXIT

# The disk's fdatasync latency, where both systems keep their data: 2000 synced 4 KiB writes.
fsync_us=$(python3 - "$WORK" <<'PY'
import os, sys, time
path = os.path.join(sys.argv[1], "fsync-probe")
fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
buf = b"\0" * 4096
n = 2000
t = time.perf_counter()
for _ in range(n):
    os.write(fd, buf)
    os.fdatasync(fd)
print(f"{(time.perf_counter() - t) / n * 1e6:.0f}")
os.close(fd); os.unlink(path)
PY
)
echo "fdatasync of a 4 KiB append: ${fsync_us} µs"

# etcd: clients 23791-23793, peers 23801-23803.
ETCD_CLUSTER="e1=http://127.0.0.1:23801,e2=http://127.0.0.1:23802,e3=http://127.0.0.1:23803"
ETCD_ENDPOINTS="127.0.0.1:23791,127.0.0.1:23792,127.0.0.1:23793"
for i in 1 2 3; do
  etcd --name "e$i" --data-dir "$WORK/etcd$i" \
    --listen-client-urls "http://127.0.0.1:2379$i" --advertise-client-urls "http://127.0.0.1:2379$i" \
    --listen-peer-urls "http://127.0.0.1:2380$i" --initial-advertise-peer-urls "http://127.0.0.1:2380$i" \
    --initial-cluster "$ETCD_CLUSTER" --initial-cluster-state new --initial-cluster-token latch-compare \
    --log-level error >"$WORK/etcd$i.log" 2>&1 &
  PIDS+=($!)
done

# Latch: clients 17379/27379/37379, peers 17380/27380/37380, HTTP 17381/27381/37381.
LATCH_CLUSTER="1=127.0.0.1:17380,2=127.0.0.1:27380,3=127.0.0.1:37380"
LATCH_ENDPOINTS="127.0.0.1:17379,127.0.0.1:27379,127.0.0.1:37379"
for i in 1 2 3; do
  "$LATCH" server --id "$i" --data-dir "$WORK/latch$i" --client-addr "127.0.0.1:${i}7379" \
    --peer-addr "127.0.0.1:${i}7380" --http-addr "127.0.0.1:${i}7381" \
    --initial-cluster "$LATCH_CLUSTER" >"$WORK/latch$i.log" 2>&1 &
  PIDS+=($!)
done

wait_for() { # what, command...
  local what=$1; shift
  for _ in $(seq 1 100); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.2
  done
  echo "timed out waiting for $what" >&2
  exit 1
}
wait_for "etcd to be healthy" env ETCDCTL_API=3 etcdctl --endpoints "$ETCD_ENDPOINTS" endpoint health
wait_for "latch to have a leader" sh -c "'$LATCH' cluster status --endpoints '$LATCH_ENDPOINTS' --output json | grep -q '\"leader\":[1-9]'"

# A member that could not start (a port in use, say) must not go unnoticed: another process on
# the same port would be measured instead.
for pid in "${PIDS[@]}"; do
  if ! kill -0 "$pid" 2>/dev/null; then
    echo "a server this script started (pid $pid) has exited; see the logs in $WORK" >&2
    exit 1
  fi
done

ETCD_VERSION=$(etcd --version 2>/dev/null | head -1)
LATCH_VERSION="$("$LATCH" --version) ($(git rev-parse --short HEAD 2>/dev/null || echo unknown))"
RESULTS="$WORK/results.jsonl"
COMMANDS="$WORK/commands.txt"
: >"$RESULTS"
: >"$COMMANDS"

WORKLOADS=(
  "put"
  "get --consistency linearizable"
  "get --consistency serializable"
  "txn-cas"
  "mixed --read-ratio 0.9"
)

run_one() { # system target workload clients round
  local system=$1 target=$2 workload=$3 clients=$4 round=$5
  local conns=$((clients < 16 ? clients : 16))
  # shellcheck disable=SC2086
  local cmd="latch bench $workload --target $target --clients $clients --connections $conns --duration $DURATION --output json"
  echo "$cmd" >>"$COMMANDS"
  echo "round $round  $system  $workload  clients=$clients" >&2
  # shellcheck disable=SC2086
  "$LATCH" bench $workload --target "$target" --clients "$clients" --connections "$conns" \
    --duration "$DURATION" --output json |
    python3 -c 'import json,sys; d=json.load(sys.stdin); d.update(round=int(sys.argv[1]), system=sys.argv[2], label=sys.argv[3]); print(json.dumps(d))' \
      "$round" "$system" "$workload" >>"$RESULTS"
}

for round in $(seq 1 "$ROUNDS"); do
  for workload in "${WORKLOADS[@]}"; do
    for clients in $CLIENTS; do
      # Alternate which system goes first, so neither always meets a warmer machine.
      if ((round % 2)); then
        run_one latch "latch://$LATCH_ENDPOINTS" "$workload" "$clients" "$round"
        run_one etcd "etcd://$ETCD_ENDPOINTS" "$workload" "$clients" "$round"
      else
        run_one etcd "etcd://$ETCD_ENDPOINTS" "$workload" "$clients" "$round"
        run_one latch "latch://$LATCH_ENDPOINTS" "$workload" "$clients" "$round"
      fi
    done
  done
done

python3 - "$RESULTS" "$OUT" "$fsync_us" "$ETCD_VERSION" "$LATCH_VERSION" "$ROUNDS" "$DURATION" "$COMMANDS" "$WORK" <<'PY'
import json, os, platform, statistics, sys, datetime
results, out, fsync_us, etcd_v, latch_v, rounds, duration, commands, work = sys.argv[1:]
rows = [json.loads(l) for l in open(results) if l.strip()]
groups = {}
for r in rows:
    groups.setdefault((r["label"], r["clients"]), {}).setdefault(r["system"], []).append(r)
def med(rs, f):
    return statistics.median(f(r) for r in rs)
cpu = "unknown"
try:
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip(); break
except OSError:
    pass
lines = []
lines.append("# Latch next to etcd\n")
lines.append(f"Measured {datetime.date.today()} by `bench/compare-etcd.sh`: a 3-member etcd cluster and a 3-member "
             "Latch cluster on 127.0.0.1, fsync on for both, data on the same disk, the same load generator "
             "(`latch bench`; its etcd target is the etcd-client crate) against each in turn, alternating which "
             f"goes first, {rounds} rounds of {duration} per cell. Numbers are the medians over the rounds; "
             "the ratio is Latch / etcd (throughput: higher is better for Latch above 1; p99: lower is better "
             "for Latch below 1).\n")
lines.append("Where Latch's time goes, and what is being done about it: [performance.md](performance.md).\n")
lines.append("## Machine\n")
lines.append(f"- CPU: {cpu}, {os.cpu_count()} cores (servers of both systems and the load generator share them)")
lines.append(f"- fdatasync of a 4 KiB append on the data disk: {fsync_us} µs (measured by the script)")
lines.append(f"- Kernel: {platform.release()}")
lines.append(f"- etcd: {etcd_v}")
lines.append(f"- Latch: {latch_v}\n")
lines.append("## Results\n")
lines.append("| workload | clients | etcd ops/s | Latch ops/s | ratio | etcd p50 ms | Latch p50 ms | etcd p99 ms | Latch p99 ms | p99 ratio | errors (etcd / Latch) |")
lines.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
for (label, clients) in sorted(groups, key=lambda k: (k[0], k[1])):
    g = groups[(label, clients)]
    e, l = g.get("etcd", []), g.get("latch", [])
    if not e or not l:
        continue
    et, lt = med(e, lambda r: r["throughput"]), med(l, lambda r: r["throughput"])
    e50, l50 = med(e, lambda r: r["latency_ms"]["p50"]), med(l, lambda r: r["latency_ms"]["p50"])
    e99, l99 = med(e, lambda r: r["latency_ms"]["p99"]), med(l, lambda r: r["latency_ms"]["p99"])
    ee = sum(sum(r["errors"].values()) for r in e); le = sum(sum(r["errors"].values()) for r in l)
    ratio = lt / et if et else float("nan")
    pr = l99 / e99 if e99 else float("nan")
    lines.append(f"| {label} | {clients} | {et:,.0f} | {lt:,.0f} | {ratio:.2f} | {e50:.2f} | {l50:.2f} | {e99:.2f} | {l99:.2f} | {pr:.2f} | {ee} / {le} |")
lines.append("\n## Commands\n")
lines.append("Servers (see `bench/compare-etcd.sh` for the exact flags): etcd members on clients 23791–23793, "
             "Latch members on clients 17379/27379/37379. Each cell ran:\n")
lines.append("```")
seen = []
for c in open(commands):
    c = c.strip()
    if c and c not in seen:
        seen.append(c)
lines.extend(seen)
lines.append("```")
open(out, "w").write("\n".join(lines) + "\n")
print(f"wrote {out}")
PY
echo "raw results: $RESULTS"
