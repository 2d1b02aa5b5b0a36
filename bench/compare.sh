#!/usr/bin/env bash
# Latch next to etcd and ZooKeeper, on this machine, in one run: a 3-member cluster of each on
# 127.0.0.1 (distinct ports, fsync on every log write for all three, data dirs on the same
# disk), the same load generator (`latch bench`, whose etcd and zk targets use the etcd-client
# and zookeeper-client crates) against all three, alternating, ROUNDS rounds at each client
# count. Writes docs/benchmarks.md: per workload the medians of the rounds (ops/s, p50, p99),
# the ratios Latch / etcd and Latch / ZooKeeper, the CPU the servers and the load generator
# spent per operation, the machine, the versions, the disk's fdatasync latency and the exact
# commands.
#
#   bench/compare.sh                                  # defaults below
#   ROUNDS=1 DURATION=3s CLIENTS="1 16 256" bench/compare.sh
#
# Environment: ROUNDS (3), CLIENTS ("1 16 256"), DURATION per run (5s), WARMUP per workload
# and system before the rounds, untimed (5s), MEMORY_KEYS (1000000; 0 skips the memory
# phase), OUT (docs/benchmarks.md), KEEP_WORK=1 to keep the servers' data and logs.
#
# After the rounds, the memory phase: MEMORY_KEYS keys of 256 bytes are written to each system
# (the `get` workload's loading), and the resident set of each of its servers is read.
#
# Before anything is timed, each system must serve a short run through its bench target with
# no error (for ZooKeeper: every server holds the key space's znodes); else the script stops
# with exit 1. It stops every process it started, by pid, on any exit. A system one of whose
# servers dies is not run again and is left out of the report (which says so), and the
# script exits 1.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
ROUNDS=${ROUNDS:-3}
CLIENTS=${CLIENTS:-"1 16 256"}
DURATION=${DURATION:-5s}
WARMUP=${WARMUP:-5s}
OUT=${OUT:-docs/benchmarks.md}
MEMORY_KEYS=${MEMORY_KEYS:-1000000}
ZK_JAR=/usr/share/java/zookeeper.jar
# slf4j's simple binding (Debian's libslf4j-java, a dependency of the zookeeper package): the
# servers' warnings go to their log files.
SLF4J_SIMPLE=/usr/share/java/slf4j-simple.jar

need_apt=()
command -v etcd >/dev/null 2>&1 || need_apt+=(etcd-server)
command -v etcdctl >/dev/null 2>&1 || need_apt+=(etcd-client)
command -v protoc >/dev/null 2>&1 || need_apt+=(protobuf-compiler)
{ [ -f "$ZK_JAR" ] && command -v java >/dev/null 2>&1; } || need_apt+=(zookeeper)
if ((${#need_apt[@]})); then
  echo "installing ${need_apt[*]} from Debian's packages"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

echo "building latch (release, with the etcd and zk targets)"
cargo build --release --features etcd,zk --bin latch
LATCH=${CARGO_TARGET_DIR:-$ROOT/target}/release/latch

WORK=$(mktemp -d "${TMPDIR:-/var/tmp}/latch-compare.XXXXXX")
PIDS=()
declare -A SYSTEM_PIDS=([latch]="" [etcd]="" [zk]="")
stop_all() {
  local pid
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  if [ "${KEEP_WORK:-0}" = 1 ]; then echo "data and logs kept in $WORK"; else rm -rf "$WORK"; fi
}
trap stop_all EXIT
trap 'echo "bench/compare.sh: a command failed at line $LINENO (exit $?)" >&2' ERR
started() { # system pid
  PIDS+=("$2")
  SYSTEM_PIDS[$1]+=" $2"
}

# The disk's fdatasync latency, where all three keep their data: 2000 synced 4 KiB appends.
fsync_us=$(python3 - "$WORK" <<'PY'
import os, sys, time
path = os.path.join(sys.argv[1], "fsync-probe")
fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
buf = b"\0" * 4096
times = []
for _ in range(2000):
    t = time.perf_counter()
    os.write(fd, buf)
    os.fdatasync(fd)
    times.append(time.perf_counter() - t)
os.close(fd); os.unlink(path)
times.sort()
print(f"{sum(times) / len(times) * 1e6:.0f} {times[len(times) // 2] * 1e6:.0f} {times[len(times) * 99 // 100] * 1e6:.0f}")
PY
)
read -r fsync_mean fsync_p50 fsync_p99 <<<"$fsync_us"
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
echo "fdatasync of a 4 KiB append: mean ${fsync_mean} µs, p50 ${fsync_p50} µs, p99 ${fsync_p99} µs"

SERVER_COMMANDS="$WORK/servers.txt"
: >"$SERVER_COMMANDS"

# etcd: clients 23791-23793, peers 23801-23803.
ETCD_CLUSTER="e1=http://127.0.0.1:23801,e2=http://127.0.0.1:23802,e3=http://127.0.0.1:23803"
ETCD_ENDPOINTS="127.0.0.1:23791,127.0.0.1:23792,127.0.0.1:23793"
for i in 1 2 3; do
  cmd=(etcd --name "e$i" --data-dir "$WORK/etcd$i"
    --listen-client-urls "http://127.0.0.1:2379$i" --advertise-client-urls "http://127.0.0.1:2379$i"
    --listen-peer-urls "http://127.0.0.1:2380$i" --initial-advertise-peer-urls "http://127.0.0.1:2380$i"
    --initial-cluster "$ETCD_CLUSTER" --initial-cluster-state new --initial-cluster-token latch-compare
    --log-level error)
  echo "${cmd[*]}" >>"$SERVER_COMMANDS"
  "${cmd[@]}" >"$WORK/etcd$i.log" 2>&1 &
  started etcd $!
done

# Latch: clients 21379/22379/23379, peers 21380/22380/23380, HTTP 21381/22381/23381.
LATCH_CLUSTER="1=127.0.0.1:21380,2=127.0.0.1:22380,3=127.0.0.1:23380"
LATCH_ENDPOINTS="127.0.0.1:21379,127.0.0.1:22379,127.0.0.1:23379"
for i in 1 2 3; do
  cmd=("$LATCH" server --id "$i" --data-dir "$WORK/latch$i" --client-addr "127.0.0.1:2${i}379"
    --peer-addr "127.0.0.1:2${i}380" --http-addr "127.0.0.1:2${i}381" --dns-addr "127.0.0.1:2${i}600" --initial-cluster "$LATCH_CLUSTER")
  echo "latch ${cmd[*]:1}" >>"$SERVER_COMMANDS"
  "${cmd[@]}" >"$WORK/latch$i.log" 2>&1 &
  started latch $!
done

# ZooKeeper: clients 22181-22183, quorum 22881-22883, leader election 23881-23883. Defaults
# otherwise, forceSync=yes among them (fsync of the log before acknowledging); the admin HTTP
# server is off (all three would want port 8080); srvr and mntr answer the health checks.
ZK_ENDPOINTS="127.0.0.1:22181,127.0.0.1:22182,127.0.0.1:22183"
ZK_CP="$ZK_JAR"
[ -f "$SLF4J_SIMPLE" ] && ZK_CP+=":$SLF4J_SIMPLE"
for i in 1 2 3; do
  mkdir -p "$WORK/zk$i"
  echo "$i" >"$WORK/zk$i/myid"
  cat >"$WORK/zk$i.cfg" <<EOF
tickTime=2000
initLimit=10
syncLimit=5
dataDir=$WORK/zk$i
clientPortAddress=127.0.0.1
clientPort=2218$i
server.1=127.0.0.1:22881:23881
server.2=127.0.0.1:22882:23882
server.3=127.0.0.1:22883:23883
forceSync=yes
maxClientCnxns=0
admin.enableServer=false
4lw.commands.whitelist=srvr,mntr
EOF
  # The heap of the package's zkServer.sh (ZK_SERVER_HEAP, 1000 MB).
  cmd=(java -Xmx1000m -Dorg.slf4j.simpleLogger.defaultLogLevel=warn -cp "$ZK_CP"
    org.apache.zookeeper.server.quorum.QuorumPeerMain "$WORK/zk$i.cfg")
  echo "${cmd[*]}   # zk$i.cfg: $(grep -v '^dataDir' "$WORK/zk$i.cfg" | paste -sd' ')" >>"$SERVER_COMMANDS"
  "${cmd[@]}" >"$WORK/zk$i.log" 2>&1 &
  started zk $!
done

four_letters() { # port word: a ZooKeeper four-letter command's answer
  timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1 && echo $2 >&3 && cat <&3" 2>/dev/null
}
zk_serving() { # every server is a leader or a follower
  local i modes=""
  for i in 1 2 3; do modes+=$(four_letters "2218$i" srvr | grep '^Mode:' || true); done
  [ "$(grep -o -E 'leader|follower' <<<"$modes" | sort | paste -sd,)" = "follower,follower,leader" ]
}

wait_for() { # what, command...
  local what=$1; shift
  for _ in $(seq 1 150); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.2
  done
  echo "timed out waiting for $what; logs in $WORK" >&2
  KEEP_WORK=1
  exit 1
}
wait_for "etcd to be healthy" env ETCDCTL_API=3 etcdctl --endpoints "$ETCD_ENDPOINTS" endpoint health
wait_for "latch to have a leader" sh -c "'$LATCH' cluster status --endpoints '$LATCH_ENDPOINTS' --output json | grep -q '\"leader\":[1-9]'"
wait_for "zookeeper to have a leader and two followers" zk_serving

DEAD="$WORK/dead-systems.txt"
: >"$DEAD"
# Whether every server of a system still runs; the first time one does not, the system is
# written to $DEAD with the pids that died.
alive() { # system
  local pid gone=""
  grep -q "^$1 " "$DEAD" && return 1
  for pid in ${SYSTEM_PIDS[$1]}; do kill -0 "$pid" 2>/dev/null || gone+=" $pid"; done
  if [ -n "$gone" ]; then
    echo "$1 servers died (pid$gone): left out of the report; logs in $WORK" >&2
    echo "$1 server pid$gone died" >>"$DEAD"
    KEEP_WORK=1
    return 1
  fi
}
# A server that could not start (a port in use, say) must not go unnoticed: another process on
# the same port would be measured instead.
for system in latch etcd zk; do
  if ! alive "$system"; then
    echo "a $system server this script started has exited; see the logs in $WORK" >&2
    exit 1
  fi
done

ETCD_VERSION=$(etcd --version 2>/dev/null | sed -n 1p)
LATCH_VERSION="$("$LATCH" --version) ($(git rev-parse --short HEAD 2>/dev/null || echo unknown))"
ZK_VERSION=$(java -cp "$ZK_CP" org.apache.zookeeper.version.VersionInfoMain 2>/dev/null | sed -n 1p)
ZK_PACKAGE=$(dpkg-query -W -f '${Version}' zookeeper 2>/dev/null || echo unknown)
JAVA_VERSION=$(java -version 2>&1 | sed -n 1p)
RESULTS="$WORK/results.jsonl"
COMMANDS="$WORK/commands.txt"
: >"$RESULTS"
: >"$COMMANDS"

declare -A TARGET=(
  [latch]="latch://$LATCH_ENDPOINTS"
  [etcd]="etcd://$ETCD_ENDPOINTS"
  [zk]="zk://$ZK_ENDPOINTS"
)
WORKLOADS=(
  "put"
  "get --consistency linearizable"
  "get --consistency serializable"
  "txn-cas"
  "mixed --read-ratio 0.9"
)

# One `latch bench` run, its JSON report extended with the round, the system, the workload's
# label, and the CPU time the servers of the system and the load generator spent in it.
cat >"$WORK/run_one.py" <<'PY'
import json, os, resource, subprocess, sys, threading, time
round_, system, label, pids = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4].split()
command = sys.argv[5:]
tick = os.sysconf("SC_CLK_TCK")
def cpu_s(pid):  # user + system seconds of a process, all its threads
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / tick
def children_s():
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime
# The servers' and the load generator's CPU are sampled every 50 ms, so that the timed phase
# (the report's elapsed_s, which ends when the run's last operation does) can be told from the
# setup before it (creating or writing the key space).
samples = []
base = children_s()
run = subprocess.Popen(command, stdout=subprocess.PIPE)
stop = threading.Event()
def sample():
    while not stop.is_set():
        t = time.monotonic()
        try:
            samples.append((t, sum(cpu_s(p) for p in pids), cpu_s(run.pid)))
        except (OSError, ValueError, IndexError):
            pass
        stop.wait(0.05)
sampler = threading.Thread(target=sample)
sampler.start()
stdout, _ = run.communicate()
end = time.monotonic()
stop.set()
sampler.join()
if run.returncode != 0:
    sys.exit(run.returncode)
samples.append((end, sum(cpu_s(p) for p in pids), children_s() - base))
def at(t, k):  # the k-th counter at time t, interpolated between samples
    before = [s for s in samples if s[0] <= t]
    after = [s for s in samples if s[0] >= t]
    if not before:
        return after[0][k]
    a, b = before[-1], after[0]
    return a[k] if b[0] == a[0] else a[k] + (b[k] - a[k]) * (t - a[0]) / (b[0] - a[0])
report = json.loads(stdout)
ops = max(report["ops"] + sum(report["errors"].values()), 1)
start = end - report["elapsed_s"]
report.update(round=int(round_), system=system, label=label,
              server_cpu_us_per_op=(at(end, 1) - at(start, 1)) / ops * 1e6,
              bench_cpu_us_per_op=(at(end, 2) - at(start, 2)) / ops * 1e6)
print(json.dumps(report))
PY

run_one() { # round system workload clients duration [results]
  local round=$1 system=$2 workload=$3 clients=$4 duration=$5 results=${6:-$RESULTS}
  local conns=$((clients < 16 ? clients : 16))
  alive "$system" || return 0
  local cmd="latch bench $workload --target ${TARGET[$system]} --clients $clients --connections $conns --duration $duration --output json"
  [ "$results" = "$RESULTS" ] && echo "$cmd" >>"$COMMANDS"
  if [ "$round" = 0 ]; then echo "warm-up  $system  $workload" >&2; else
    echo "round $round  $system  $workload  clients=$clients" >&2; fi
  local out
  # shellcheck disable=SC2086
  if out=$(python3 "$WORK/run_one.py" "$round" "$system" "$workload" "${SYSTEM_PIDS[$system]}" \
    "$LATCH" bench $workload --target "${TARGET[$system]}" --clients "$clients" --connections "$conns" \
    --duration "$duration" --output json); then
    # A run that ended with a server gone is not reported.
    alive "$system" && echo "$out" >>"$results"
  elif alive "$system"; then
    echo "latch bench failed against $system although its servers run; see above and the logs in $WORK" >&2
    KEEP_WORK=1
    exit 1
  fi
}

# The integration check: each target must serve a short run with no error, through every
# member (3 connections, one per member given); for ZooKeeper, every server must then hold the
# key space's znodes (the children of /bench and /bench itself).
CHECK_KEYS=1000
for system in latch etcd zk; do
  # shellcheck disable=SC2086
  check=$("$LATCH" bench put --target "${TARGET[$system]}" --clients 3 --connections 3 --ops 300 \
    --keyspace $CHECK_KEYS --output json) || {
    echo "the $system target of latch bench cannot reach its servers (${TARGET[$system]}); logs in $WORK" >&2
    KEEP_WORK=1
    exit 1
  }
  python3 -c 'import json,sys; d=json.loads(sys.argv[1]); sys.exit(0 if d["ops"]==300 and not d["errors"] else 1)' \
    "$check" || {
    echo "the $system target of latch bench failed its check run: $check" >&2
    KEEP_WORK=1
    exit 1
  }
done
for i in 1 2 3; do
  znodes=$(four_letters "2218$i" mntr | awk '$1 == "zk_znode_count" { print $2 }')
  if [ -z "$znodes" ] || ((znodes < CHECK_KEYS + 1)); then
    echo "zookeeper server $i holds ${znodes:-no} znodes after the check run, not the $CHECK_KEYS created" >&2
    KEEP_WORK=1
    exit 1
  fi
done
echo "every target serves: latch, etcd and zk answered 300 puts each through all three members"

# Warm-up, untimed: each workload once against each system (the JVM compiles ZooKeeper's hot
# paths; every system gets the same).
for workload in "${WORKLOADS[@]}"; do
  for system in latch etcd zk; do
    run_one 0 "$system" "$workload" 16 "$WARMUP" /dev/null
  done
done

SYSTEMS=(latch etcd zk)
for round in $(seq 1 "$ROUNDS"); do
  for workload in "${WORKLOADS[@]}"; do
    for clients in $CLIENTS; do
      # Rotate which system goes first, so none always meets a warmer machine.
      for k in 0 1 2; do
        run_one "$round" "${SYSTEMS[$(((round - 1 + k) % 3))]}" "$workload" "$clients" "$DURATION"
      done
    done
  done
done
for system in latch etcd zk; do alive "$system" || true; done

# The memory phase: every key of a MEMORY_KEYS key space written once (in transactions of 100
# puts; on ZooKeeper, znodes created and set), then the resident set of each server.
MEMORY="$WORK/memory.txt"
: >"$MEMORY"
if ((MEMORY_KEYS > 0)); then
  for system in latch etcd zk; do
    alive "$system" || continue
    echo "memory  $system  writing $MEMORY_KEYS keys" >&2
    if ! "$LATCH" bench get --consistency serializable --target "${TARGET[$system]}" --clients 16 \
      --connections 16 --keyspace "$MEMORY_KEYS" --duration 1s --output json >/dev/null; then
      echo "writing $MEMORY_KEYS keys to $system failed: left out of the memory table" >&2
      continue
    fi
    sleep 2
    rss=""
    for pid in ${SYSTEM_PIDS[$system]}; do rss+=" $(awk '/^VmRSS/ { print $2 }' "/proc/$pid/status")"; done
    echo "$system$rss" >>"$MEMORY"
  done
fi

# Which member led each system at the end: a 1-connection run talks to member 1, and a
# follower forwards (Latch, etcd, ZooKeeper alike), which costs it a hop.
latch_leader=$("$LATCH" cluster status --endpoints "$LATCH_ENDPOINTS" --output json 2>/dev/null |
  python3 -c 'import json,sys; print(json.load(sys.stdin).get("leader", "?"))' 2>/dev/null || echo "?")
etcd_leader="?"
for i in 1 2 3; do
  if ETCDCTL_API=3 etcdctl --endpoints "127.0.0.1:2379$i" endpoint status -w json 2>/dev/null |
    python3 -c 'import json,sys; s=json.load(sys.stdin)[0]["Status"]; sys.exit(0 if s["leader"]==s["header"]["member_id"] else 1)' 2>/dev/null; then
    etcd_leader=$i
  fi
done
zk_leader="?"
for i in 1 2 3; do four_letters "2218$i" srvr | grep -q '^Mode: leader' && zk_leader=$i; done
LEADERS="Latch member $latch_leader, etcd member $etcd_leader, ZooKeeper server $zk_leader"

LOAD_END=$(cut -d' ' -f1-3 /proc/loadavg)
cpu=$(grep -m1 '^model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//' || echo unknown)
CPU="$cpu" FSYNC="$fsync_mean $fsync_p50 $fsync_p99" ETCD_VERSION="$ETCD_VERSION" LATCH_VERSION="$LATCH_VERSION" \
  ZK_VERSION="$ZK_VERSION" ZK_PACKAGE="$ZK_PACKAGE" JAVA_VERSION="$JAVA_VERSION" \
  LOAD="$LOAD_START|$LOAD_END" LEADERS="$LEADERS" \
  python3 - "$RESULTS" "$OUT" "$ROUNDS" "$DURATION" "$WARMUP" "$COMMANDS" "$SERVER_COMMANDS" "$DEAD" \
  "$MEMORY" "$MEMORY_KEYS" <<'PY'
import json, os, platform, statistics, sys, datetime
results, out, rounds, duration, warmup, commands, servers, dead, memory, memory_keys = sys.argv[1:]
env = os.environ
facts = {
    "cpu": env["CPU"], "fsync": env["FSYNC"].split(), "etcd": env["ETCD_VERSION"],
    "latch": env["LATCH_VERSION"], "zk": env["ZK_VERSION"], "zk_package": env["ZK_PACKAGE"],
    "java": env["JAVA_VERSION"], "load": env["LOAD"].split("|"), "leaders": env["LEADERS"],
}
NAMES = {"latch": "Latch", "etcd": "etcd", "zk": "ZooKeeper"}
dead_lines = [l.strip() for l in open(dead) if l.strip()]
dead_systems = {l.split()[0] for l in dead_lines}
systems = [s for s in ("latch", "etcd", "zk") if s not in dead_systems]
rows = [json.loads(l) for l in open(results) if l.strip()]
rows = [r for r in rows if r["system"] in systems]
groups = {}
for r in rows:
    groups.setdefault(r["label"], {}).setdefault(r["clients"], {}).setdefault(r["system"], []).append(r)
def med(rs, f):
    return statistics.median(f(r) for r in rs) if rs else None
def num(x, fmt):
    return "–" if x is None else format(x, fmt)
def ratio(a, b):
    return "–" if a is None or not b else f"{a / b:.2f}"

L = []
L.append("# Latch next to etcd and ZooKeeper\n")
L.append(f"Measured {datetime.date.today()} by `bench/compare.sh`: a 3-member Latch cluster, a 3-member etcd "
         "cluster and a 3-server ZooKeeper ensemble on 127.0.0.1, every one fsyncing its log before it "
         "acknowledges a write (ZooKeeper's default `forceSync=yes`), data on the same disk, the same load "
         "generator (`latch bench`; its etcd target is the etcd-client crate, its zk target the "
         "zookeeper-client crate) against each in turn, rotating which goes first, "
         f"{rounds} round(s) of {duration} per cell, after an untimed warm-up of {warmup} per workload and "
         "system (the JVM compiles ZooKeeper's hot paths). Numbers are the medians over the rounds. "
         "Ratios are Latch's throughput over the other's: above 1, Latch served more.\n")
L.append("Where Latch's time goes, and what is being done about it: [performance.md](performance.md).\n")
if dead_lines:
    L.append("## Not reported\n")
    for l in dead_lines:
        L.append(f"- {l}: its results are left out.")
    L.append("")
L.append("## Machine\n")
L.append(f"- CPU: {facts['cpu']}, {os.cpu_count()} cores (the servers of all three systems and the load "
         "generator share them; only the system under load is busy)")
m, p50, p99 = facts["fsync"]
L.append(f"- fdatasync of a 4 KiB append on the data disk: mean {m} µs, p50 {p50} µs, p99 {p99} µs "
         "(measured by the script, before the servers start)")
L.append(f"- Load average (1, 5, 15 min) before the servers started: {facts['load'][0]} (other work on "
         f"the machine shows here); at the end: {facts['load'][1]} (this script's own load included)")
L.append(f"- Leaders at the end of the run: {facts['leaders']} (a 1-connection run talks to member 1; "
         "on a follower every write and linearizable read takes one more hop, to the leader)")
L.append(f"- Kernel: {platform.release()}")
L.append(f"- Latch: {facts['latch']}")
L.append(f"- etcd: {facts['etcd']} (Debian package)")
L.append(f"- ZooKeeper: {facts['zk']} (Debian package {facts['zk_package']}), {facts['java']}\n")
L.append("## How each workload maps onto each system\n")
L.append("| workload | Latch, etcd | ZooKeeper |")
L.append("|---|---|---|")
L.append("| `put` | put of a random key | `setData` of a random znode of `/bench` (all created before the clock) |")
L.append("| `get --consistency linearizable` | range read confirmed by the leader (ReadIndex) | `sync` and `getData`, pipelined on the session |")
L.append("| `get --consistency serializable` | range read from the member's own copy | `getData` from the session's server |")
L.append("| `txn-cas` | linearizable read of the mod revision, then a txn comparing it | `getData` (`stat.version`), then `setData` with that version |")
L.append("| `mixed --read-ratio 0.9` | 90% linearizable gets, 10% puts | 90% `sync`+`getData`, 10% `setData` |")
L.append("")
L.append("Keys are 32 bytes, values 256 bytes, 100,000 keys (znodes `/bench/000…`), written before "
         "the clock for `get` and `mixed`. A connection is a gRPC channel (Latch, etcd) or one ZooKeeper "
         "session pinned to one server (the i-th to the i-th server); up to 16 connections, shared by the "
         "clients. `txn-cas` reads linearizably on Latch and etcd but with a plain `getData` on "
         "ZooKeeper, as ZooKeeper clients do before a conditional `setData`: ZooKeeper does one step "
         "less there.\n")
L.append("## Results\n")
order = ["put", "get --consistency linearizable", "get --consistency serializable", "txn-cas", "mixed --read-ratio 0.9"]
for label in sorted(groups, key=lambda l: (order.index(l) if l in order else 99, l)):
    L.append(f"### {label}\n")
    head = ["clients"] + [f"{NAMES[s]} ops/s" for s in systems]
    head += [f"Latch/{NAMES[s]}" for s in systems if s != "latch" and "latch" in systems]
    head += [f"{NAMES[s]} p50 ms" for s in systems] + [f"{NAMES[s]} p99 ms" for s in systems]
    head += ["errors (" + " / ".join(NAMES[s] for s in systems) + ")"]
    L.append("| " + " | ".join(head) + " |")
    L.append("|" + "---:|" * (len(head) - 1) + "---|")
    for clients in sorted(groups[label]):
        g = groups[label][clients]
        tp = {s: med(g.get(s, []), lambda r: r["throughput"]) for s in systems}
        cells = [str(clients)] + [num(tp[s], ",.0f") for s in systems]
        cells += [ratio(tp["latch"], tp[s]) for s in systems if s != "latch" and "latch" in systems]
        cells += [num(med(g.get(s, []), lambda r: r["latency_ms"]["p50"]), ".2f") for s in systems]
        cells += [num(med(g.get(s, []), lambda r: r["latency_ms"]["p99"]), ".2f") for s in systems]
        cells += [" / ".join(str(sum(sum(r["errors"].values()) for r in g.get(s, []))) for s in systems)]
        L.append("| " + " | ".join(cells) + " |")
    L.append("")
L.append("## CPU per operation\n")
L.append("CPU time (user + system) that the three servers of the system under load, and the load "
         "generator, spent in the timed phase of a run, divided by its operations, in µs; medians over "
         "the rounds. Sampled from /proc every 50 ms, so the setup before the clock (writing the key "
         "space) is left out. The load generator's share is what its client of each system costs.\n")
head = ["workload", "clients"] + [f"{NAMES[s]} servers" for s in systems] + [f"bench → {NAMES[s]}" for s in systems]
L.append("| " + " | ".join(head) + " |")
L.append("|---|" + "---:|" * (len(head) - 1))
for label in sorted(groups, key=lambda l: (order.index(l) if l in order else 99, l)):
    for clients in sorted(groups[label]):
        g = groups[label][clients]
        cells = [label, str(clients)]
        cells += [num(med(g.get(s, []), lambda r: r["server_cpu_us_per_op"]), ",.0f") for s in systems]
        cells += [num(med(g.get(s, []), lambda r: r["bench_cpu_us_per_op"]), ",.0f") for s in systems]
        L.append("| " + " | ".join(cells) + " |")
memory_rows = [l.split() for l in open(memory) if l.strip()]
if memory_rows:
    L.append(f"\n## Memory\n")
    L.append(f"Resident set (VmRSS) of each server after {int(memory_keys):,} keys of 256 bytes were "
             "written once (after the rounds above, so each system also holds what they wrote: etcd "
             "keeps every revision until it is compacted, Latch and ZooKeeper keep the latest value). "
             "The commands: the `get` workload's loading, `latch bench get --consistency serializable "
             f"--keyspace {memory_keys} --clients 16 --connections 16 --duration 1s`.\n")
    L.append("| system | member 1 MiB | member 2 MiB | member 3 MiB | mean bytes per key |")
    L.append("|---|---:|---:|---:|---:|")
    for row in memory_rows:
        kib = [int(x) for x in row[1:]]
        per_key = sum(kib) / len(kib) * 1024 / int(memory_keys)
        L.append(f"| {NAMES[row[0]]} | " + " | ".join(f"{k / 1024:,.0f}" for k in kib) + f" | {per_key:,.0f} |")
L.append("\n## Commands\n")
L.append("Servers (data directories under a fresh `mktemp -d`):\n")
L.append("```")
L.extend(l.rstrip() for l in open(servers) if l.strip())
L.append("```\n")
L.append("Each cell ran (after the warm-up, the same commands with `--clients 16 --duration "
         f"{warmup}`):\n")
L.append("```")
seen = []
for c in open(commands):
    c = c.strip()
    if c and c not in seen:
        seen.append(c)
L.extend(seen)
L.append("```")
# Sections other scripts write into the same file (sessions.sh, locks.sh: "## Sessions …",
# "## Locks …") are kept as they are, after this script's own.
ours = {line for l in L for line in l.splitlines() if line.startswith("## ")}
kept, keep = [], False
if os.path.exists(out):
    for line in open(out).read().splitlines():
        if line.startswith("## "):
            keep = line not in ours
        if keep:
            kept.append(line)
open(out, "w").write("\n".join(L) + "\n" + ("\n" + "\n".join(kept) + "\n" if kept else ""))
print(f"wrote {out}")
PY
if [ -s "$DEAD" ]; then
  echo "not reported, servers died: $(cut -d' ' -f1 "$DEAD" | paste -sd' ')" >&2
  exit 1
fi
