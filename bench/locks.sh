#!/usr/bin/env bash
# Locks, Latch next to etcd and ZooKeeper, on this machine (issue 9): ROUNDS rounds; in each,
# for each system in turn (rotating which goes first), a fresh 3-member cluster on 127.0.0.1
# (etcd from Debian's `etcd-server`, ZooKeeper from Debian's `zookeeper`, each fsyncing its log
# before it acknowledges a write), an untimed warm-up of WARMUP per case, then
# `latch bench lock` in three cases, DURATION each:
#   uncontended     16 clients, each its own lock name (--uncontended)
#   100 names       16 clients, a random one of 100 names per pair (--names 100)
#   100 names       256 clients, likewise
# One operation is an acquire + release pair of an exclusive lock; every client has its own
# session (etcd: lease; ZooKeeper: session, Curator's lock recipe). See src/bench/locks.rs.
#
# Prints a markdown table, medians over the rounds: system, case, clients, pairs/s (and its
# spread), p50, p99, errors (summed); the CPU the system's three servers and the load generator
# spent per pair, and the cores other processes on the machine kept busy meanwhile, all three
# over the whole command, session setup included. Then the goal of issue 9: at 16 clients
# Latch's throughput at least 5x the better peer's, and a lower p99 at every client count.
# Writes it to OUT too, when set.
#
#   bench/locks.sh
#   ROUNDS=1 DURATION=5s WARMUP=2s SYSTEMS="latch zk" bench/locks.sh
#
# Environment: ROUNDS (3), DURATION per case (20s), WARMUP per case and system, untimed (5s),
# SYSTEMS ("latch etcd zk"; one cluster runs at a time), OUT (none), KEEP_WORK=1 to keep the
# servers' data and logs, LATCH_BIN to use that latch binary (built with --features etcd,zk for
# the other systems) instead of building one. Needs cargo and python3; etcd, etcdctl, protoc and ZooKeeper are
# installed with apt-get if missing. Stops every process it started, by pid, on any exit. A run
# that fails, or a server that dies, stops the script with exit 1.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
DURATION=${DURATION:-20s}
WARMUP=${WARMUP:-5s}
SYSTEMS=${SYSTEMS:-"latch etcd zk"}
ROUNDS=${ROUNDS:-3}
OUT=${OUT:-}
ZK_JAR=/usr/share/java/zookeeper.jar
SLF4J_SIMPLE=/usr/share/java/slf4j-simple.jar
CASES=(
  "uncontended|16|--uncontended"
  "100 names|16|--names 100"
  "100 names|256|--names 100"
)

need_apt=()
command -v etcd >/dev/null 2>&1 || need_apt+=(etcd-server)
command -v etcdctl >/dev/null 2>&1 || need_apt+=(etcd-client)
command -v protoc >/dev/null 2>&1 || need_apt+=(protobuf-compiler)
{ [ -f "$ZK_JAR" ] && command -v java >/dev/null 2>&1; } || need_apt+=(zookeeper)
if ((${#need_apt[@]})); then
  echo "installing ${need_apt[*]} from Debian's packages" >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

if [ -n "${LATCH_BIN:-}" ]; then
  LATCH=$LATCH_BIN  # a build given (two builds side by side), used as it is
else
  echo "building latch (release, with the etcd and zk targets)" >&2
  cargo build --release --features etcd,zk --bin latch >&2
  LATCH=${CARGO_TARGET_DIR:-$ROOT/target}/release/latch
fi

WORK=$(mktemp -d "${TMPDIR:-/var/tmp}/latch-locks.XXXXXX")
PIDS=()
stop_servers() {
  local pid
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  PIDS=()
}
finish() {
  stop_servers
  if [ "${KEEP_WORK:-0}" = 1 ]; then echo "data and logs kept in $WORK" >&2; else rm -rf "$WORK"; fi
}
trap finish EXIT
trap 'echo "bench/locks.sh: a command failed at line $LINENO (exit $?)" >&2' ERR

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
four_letters() { # port word: a ZooKeeper four-letter command's answer
  timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1 && echo $2 >&3 && cat <&3" 2>/dev/null
}
zk_serving() { # every server is a leader or a follower
  local i modes=""
  for i in 1 2 3; do modes+=$(four_letters "2218$i" srvr | grep '^Mode:' || true); done
  [ "$(grep -o -E 'leader|follower' <<<"$modes" | sort | paste -sd,)" = "follower,follower,leader" ]
}
alive() { # every server started still runs
  local pid
  for pid in "${PIDS[@]}"; do kill -0 "$pid" 2>/dev/null || { echo "server pid $pid died; logs in $WORK" >&2; return 1; }; done
}

SERVER_COMMANDS="$WORK/servers.txt"
: >"$SERVER_COMMANDS"
# Starts a fresh 3-member cluster of the system (same ports as bench/compare.sh) and sets
# TARGET to the --target naming all three members.
start() { # system
  local i cmd
  rm -rf "$WORK/data"
  mkdir -p "$WORK/data"
  case $1 in
    latch)
      # Clients 21379/22379/23379, peers 21380/22380/23380, HTTP 21381/22381/23381.
      for i in 1 2 3; do
        cmd=("$LATCH" server --id "$i" --data-dir "$WORK/data/latch$i" --client-addr "127.0.0.1:2${i}379"
          --peer-addr "127.0.0.1:2${i}380" --http-addr "127.0.0.1:2${i}381" --dns-addr "127.0.0.1:2${i}600"
          --initial-cluster "1=127.0.0.1:21380,2=127.0.0.1:22380,3=127.0.0.1:23380")
        echo "latch ${cmd[*]:1}" >>"$SERVER_COMMANDS"
        "${cmd[@]}" >"$WORK/latch$i.log" 2>&1 &
        PIDS+=($!)
      done
      TARGET="latch://127.0.0.1:21379,127.0.0.1:22379,127.0.0.1:23379"
      wait_for "latch to have a leader" sh -c \
        "'$LATCH' cluster status --endpoints '${TARGET#latch://}' --output json | grep -q '\"leader\":[1-9]'"
      ;;
    etcd)
      # Clients 23791-23793, peers 23801-23803.
      for i in 1 2 3; do
        cmd=(etcd --name "e$i" --data-dir "$WORK/data/etcd$i"
          --listen-client-urls "http://127.0.0.1:2379$i" --advertise-client-urls "http://127.0.0.1:2379$i"
          --listen-peer-urls "http://127.0.0.1:2380$i" --initial-advertise-peer-urls "http://127.0.0.1:2380$i"
          --initial-cluster "e1=http://127.0.0.1:23801,e2=http://127.0.0.1:23802,e3=http://127.0.0.1:23803"
          --initial-cluster-state new --initial-cluster-token latch-locks --log-level error)
        echo "${cmd[*]}" >>"$SERVER_COMMANDS"
        "${cmd[@]}" >"$WORK/etcd$i.log" 2>&1 &
        PIDS+=($!)
      done
      TARGET="etcd://127.0.0.1:23791,127.0.0.1:23792,127.0.0.1:23793"
      wait_for "etcd to be healthy" env ETCDCTL_API=3 etcdctl --endpoints "${TARGET#etcd://}" endpoint health
      ;;
    zk)
      # Clients 22181-22183, quorum 22881-22883, leader election 23881-23883; defaults
      # otherwise (forceSync=yes), but no limit on connections from one address (256 sessions
      # come from 127.0.0.1) and no admin HTTP server.
      local cp="$ZK_JAR"
      [ -f "$SLF4J_SIMPLE" ] && cp+=":$SLF4J_SIMPLE"
      for i in 1 2 3; do
        mkdir -p "$WORK/data/zk$i"
        echo "$i" >"$WORK/data/zk$i/myid"
        cat >"$WORK/zk$i.cfg" <<EOF
tickTime=2000
initLimit=10
syncLimit=5
dataDir=$WORK/data/zk$i
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
        cmd=(java -Xmx1000m -Dorg.slf4j.simpleLogger.defaultLogLevel=warn -cp "$cp"
          org.apache.zookeeper.server.quorum.QuorumPeerMain "$WORK/zk$i.cfg")
        echo "${cmd[*]}   # zk$i.cfg: $(grep -v '^dataDir' "$WORK/zk$i.cfg" | paste -sd' ')" >>"$SERVER_COMMANDS"
        "${cmd[@]}" >"$WORK/zk$i.log" 2>&1 &
        PIDS+=($!)
      done
      TARGET="zk://127.0.0.1:22181,127.0.0.1:22182,127.0.0.1:22183"
      wait_for "zookeeper to have a leader and two followers" zk_serving
      ;;
  esac
  # A server that could not start (a port in use, say) must not go unnoticed: another process
  # on the same port would be measured instead.
  alive || { KEEP_WORK=1; exit 1; }
}

RESULTS="$WORK/results.jsonl"
COMMANDS="$WORK/commands.txt"
: >"$RESULTS"
: >"$COMMANDS"
# Runs one command and prints its JSON report extended with the system, the case, the round,
# the CPU seconds the servers (pids given) and the command spent, and the cores the rest of the
# machine kept busy meanwhile (other work on a shared machine shows here), all over the whole
# command.
cat >"$WORK/run_one.py" <<'PY'
import json, os, resource, subprocess, sys, time
system, label, round_, pids = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4].split()
command = sys.argv[5:]
tick = os.sysconf("SC_CLK_TCK")
def servers_s():
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / tick
def machine_busy_s():
    with open("/proc/stat") as f:
        cpu = [int(x) for x in f.readline().split()[1:]]
    return (sum(cpu) - cpu[3] - cpu[4]) / tick  # all but idle and iowait
def bench_s():
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime
t0, s0, m0, b0 = time.monotonic(), servers_s(), machine_busy_s(), bench_s()
run = subprocess.run(command, stdout=subprocess.PIPE)
if run.returncode != 0:
    sys.exit(run.returncode)
t1, s1, m1, b1 = time.monotonic(), servers_s(), machine_busy_s(), bench_s()
report = json.loads(run.stdout)
report.update(system=system, label=label, round=round_, server_cpu_s=s1 - s0, bench_cpu_s=b1 - b0,
              other_cores=max(0.0, (m1 - m0) - (s1 - s0) - (b1 - b0)) / (t1 - t0))
print(json.dumps(report))
PY

# One `latch bench lock` run; its extended report is appended to $RESULTS unless told otherwise.
run_one() { # system case clients duration flags [results]
  local system=$1 label=$2 clients=$3 duration=$4 flags=$5 results=${6:-$RESULTS}
  local cmd="latch bench lock $flags --target $TARGET --clients $clients --duration $duration --output json"
  [ "$results" = "$RESULTS" ] && echo "$cmd" >>"$COMMANDS"
  echo "round $ROUND  $system  $label  clients=$clients  $duration  (load average $(cut -d' ' -f1 /proc/loadavg))" >&2
  # shellcheck disable=SC2086
  if ! python3 "$WORK/run_one.py" "$system" "$label" "$ROUND" "${PIDS[*]}" "$LATCH" bench lock $flags --target "$TARGET" \
    --clients "$clients" --duration "$duration" --output json >>"$results"; then
    echo "latch bench lock failed against $system; logs in $WORK" >&2
    KEEP_WORK=1
    exit 1
  fi
  alive || { KEEP_WORK=1; exit 1; }
}

LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
read -r -a ORDER <<<"$SYSTEMS"
for ROUND in $(seq 1 "$ROUNDS"); do
  # Rotate which system goes first, so none always meets a busier machine.
  for k in "${!ORDER[@]}"; do
    system=${ORDER[$(((ROUND - 1 + k) % ${#ORDER[@]}))]}
    echo "== round $ROUND, $system: a fresh 3-member cluster" >&2
    start "$system"
    # Untimed, every case once: the JVM compiles ZooKeeper's hot paths; every system gets the same.
    for c in "${CASES[@]}"; do
      IFS='|' read -r label clients flags <<<"$c"
      run_one "$system" "warm-up, $label" "$clients" "$WARMUP" "$flags" /dev/null
    done
    for c in "${CASES[@]}"; do
      IFS='|' read -r label clients flags <<<"$c"
      run_one "$system" "$label" "$clients" "$DURATION" "$flags"
    done
    stop_servers
  done
done

ETCD_VERSION=$(etcd --version 2>/dev/null | sed -n 1p)
ZK_VERSION=$(java -cp "$ZK_JAR" org.apache.zookeeper.version.VersionInfoMain 2>/dev/null | sed -n 1p)
LATCH_VERSION="$("$LATCH" --version) ($(git rev-parse --short HEAD 2>/dev/null || echo unknown))"
CPU_MODEL=$(grep -m1 '^model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//' || echo unknown)
FACTS="$(nproc) cores ($CPU_MODEL); load average before the runs $LOAD_START; $LATCH_VERSION; $ETCD_VERSION; ZooKeeper $ZK_VERSION"

python3 - "$RESULTS" "$DURATION" "$WARMUP" "$ROUNDS" "$FACTS" "$COMMANDS" "$SERVER_COMMANDS" <<'PY' | tee ${OUT:+"$OUT"}
import datetime, json, statistics, sys
results, duration, warmup, rounds, facts, commands, servers = sys.argv[1:]
runs = [json.loads(l) for l in open(results) if l.strip()]
NAMES = {"latch": "Latch", "etcd": "etcd", "zk": "ZooKeeper"}
# One row per system and case: the medians over the rounds, errors summed over them.
groups = {}
for r in runs:
    failed = sum(r["errors"].values())
    pairs = max(r["ops"] + failed, 1)
    r["server_us"] = r["server_cpu_s"] / pairs * 1e6
    r["bench_us"] = r["bench_cpu_s"] / pairs * 1e6
    groups.setdefault((r["system"], r["label"], r["clients"]), []).append(r)
rows = []
for (system, label, clients), rs in groups.items():
    med = lambda f: statistics.median(f(r) for r in rs)
    errors = {}
    for r in rs:
        for kind, n in r["errors"].items():
            errors[kind] = errors.get(kind, 0) + n
    rows.append({"system": system, "label": label, "clients": clients, "rounds": len(rs),
                 "throughput": med(lambda r: r["throughput"]),
                 "p50": med(lambda r: r["latency_ms"]["p50"]), "p99": med(lambda r: r["latency_ms"]["p99"]),
                 "errors": errors, "server_us": med(lambda r: r["server_us"]),
                 "bench_us": med(lambda r: r["bench_us"]), "other": med(lambda r: r["other_cores"]),
                 "spread": (min(r["throughput"] for r in rs), max(r["throughput"] for r in rs))})
L = [f"## Locks ({datetime.date.today()}, {rounds} round(s) of {duration} per case, after an untimed "
     f"warm-up of {warmup} per case)\n",
     f"{facts}. Command: `bench/locks.sh`. Medians over the rounds; errors summed over them.\n",
     "| system | case | clients | pairs/s | pairs/s, min–max | p50 ms | p99 ms | errors | servers' CPU µs/pair | bench CPU µs/pair | other load (cores) |",
     "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
for r in rows:
    errors = ", ".join(f"{k} {v}" for k, v in sorted(r["errors"].items())) or "0"
    lo, hi = r["spread"]
    L.append(f"| {NAMES[r['system']]} | {r['label']} | {r['clients']} | {r['throughput']:,.0f} | "
             f"{lo:,.0f}–{hi:,.0f} | {r['p50']:.2f} | {r['p99']:.2f} | {errors} | {r['server_us']:,.0f} | "
             f"{r['bench_us']:,.0f} | {r['other']:.2f} |")
L.append("")
def cell(system, label, clients):
    return next((r for r in rows if (r["system"], r["label"], r["clients"]) == (system, label, clients)), None)
goal = []
for label, clients in [("uncontended", 16), ("100 names", 16), ("100 names", 256)]:
    latch = cell("latch", label, clients)
    peers = [r for r in (cell("etcd", label, clients), cell("zk", label, clients)) if r]
    if not latch or not peers:
        continue
    best = max(peers, key=lambda r: r["throughput"])
    lowest = min(peers, key=lambda r: r["p99"])
    ratio = latch["throughput"] / best["throughput"] if best["throughput"] else float("inf")
    p99 = latch["p99"]
    line = (f"- {label}, {clients} clients: Latch {ratio:.2f}x the throughput of the better peer "
            f"({NAMES[best['system']]}); p99 {p99:.2f} ms against {lowest['p99']:.2f} ms "
            f"({NAMES[lowest['system']]}, the lower peer)")
    if clients == 16:
        line += f": throughput goal (5x) {'met' if ratio >= 5 else 'not met'}"
        line += f", p99 goal {'met' if p99 < lowest['p99'] else 'not met'}."
    else:
        line += f": p99 goal {'met' if p99 < lowest['p99'] else 'not met'}."
    goal.append(line)
if goal:
    L.append("Issue 9's goal: at 16 clients at least 5x the better peer's pairs/s, and a lower p99 at every "
             "client count.\n")
    L.extend(goal)
    L.append("")
L.append("Servers (data directories fresh for each system and round):\n")
L.append("```")
L.extend(dict.fromkeys(l.rstrip() for l in open(servers) if l.strip()))
L.append("```\n")
L.append("Runs:\n")
L.append("```")
L.extend(dict.fromkeys(l.strip() for l in open(commands) if l.strip()))
L.append("```")
print("\n".join(L))
PY
