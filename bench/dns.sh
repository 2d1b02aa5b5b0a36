#!/usr/bin/env bash
# DNS, Latch next to NSD, on this machine (issue 11). ROUNDS rounds; in each, a fresh
# single-member Latch cluster on 127.0.0.1 (DNS port 19600) with the service `web` registered
# with 3 instances (`latch svc register`), and a fresh NSD (Debian's `nsd`, an authoritative
# server in C) on 127.0.0.1:19653 serving a zone file with the same A records for
# web.service.latch. (the addresses Latch answers, read back with dig; plus the SOA and NS NSD
# needs; the same TTL; NSD with round-robin and minimal responses, as Latch answers, and its
# response rate limiting off). After an untimed warm-up of WARMUP against each, both are
# measured by the same load generator with the same flags, alternating (rotating which goes
# first), at each of CLIENTS clients, DURATION each:
#   latch bench dns --dns-addr H:P --service web --clients N --duration D --output json
# UDP A lookups of web.service.latch., each client its own socket with one query in flight; a
# query unanswered within 1 s is lost. See src/bench/dns.rs.
#
# Then, once, on a fresh member: a registry of INSTANCES (10,000) instances of one service,
# registered 64 at a time through the Registry gRPC service, and List of it timed from 1 and 16
# clients (`latch bench registry`, src/bench/registry.rs), with the member's resident memory
# (VmRSS) before and after; then a service of BIG (1,000) instances, asked with dig over UDP
# without and with EDNS (the TC bit and the records that fit), over TCP (all of them), and as a
# resolver asks (UDP, then TCP on TC); and `latch bench dns` of it over UDP.
#
# Latch runs as it ships: `latch server`'s default log filter
# (info,hickory_server=warn,hickory_proto=warn,hickory_net=warn, src/cli/mod.rs) writes no line
# per query. (An earlier version of this script also ran a member with hickory-server's per-query
# log turned off, when the default still wrote two lines per query; that is now the default.)
#
# Prints a markdown section "## DNS (issue 11)": medians over the rounds of queries/s (and
# their spread), latency p50/p99/p999, lost queries (summed; must be 0), the answers by code and
# records per answer; the CPU the server and the load generator spent per query and as cores,
# and the cores the rest of the machine kept busy meanwhile; Latch's queries/s as a share of
# NSD's (the goal: at least 50 % with no lost query); then the registry measurements. Writes it
# into OUT (default docs/benchmarks.md), replacing the part of the section above the marker line
# below (what follows the marker, written by hand, is kept), keeping every other section;
# OUT=- prints it only.
#
#   bench/dns.sh
#   ROUNDS=1 DURATION=5s CLIENTS=16 OUT=- bench/dns.sh
#
# Environment: ROUNDS (3), DURATION per run (15s), WARMUP per server and round, untimed (3s),
# CLIENTS ("16 64"), SERVERS ("latch nsd"; latch is always started: NSD serves the records it
# answers), INSTANCES (10000), BIG (1000), NSD_SERVERS (NSD's server-count, 1: its
# default), OUT (docs/benchmarks.md), KEEP_WORK=1 to keep the servers' data and logs. Needs
# cargo and python3; nsd and dig (dnsutils) are installed with apt-get if missing. Stops every
# process it started, by pid, on any exit. A run that fails, or a server that dies, stops the
# script with exit 1.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-15s}
WARMUP=${WARMUP:-3s}
CLIENTS=${CLIENTS:-"16 64"}
INSTANCES=${INSTANCES:-10000}
BIG=${BIG:-1000}
NSD_SERVERS=${NSD_SERVERS:-1}
SERVERS=${SERVERS:-"latch nsd"}
OUT=${OUT:-docs/benchmarks.md}
SECTION="## DNS (issue 11)"
MARKER="<!-- bench/dns.sh writes the part of this section above this line; what follows is written by hand and kept -->"

# Ports of this script alone (below the ephemeral range), so that it can run beside the other
# bench scripts' clusters and the tests' members.
# latch: 19379 (clients), 19380 (peers), 19381 (HTTP), 19600 (DNS); NSD: 19653.
CLIENT_ADDR=127.0.0.1:19379
LATCH_DNS=127.0.0.1:19600
NSD_DNS=127.0.0.1:19653

need_apt=()
command -v nsd >/dev/null 2>&1 || [ -x /usr/sbin/nsd ] || need_apt+=(nsd)
command -v dig >/dev/null 2>&1 || need_apt+=(dnsutils)
if ((${#need_apt[@]})); then
  echo "installing ${need_apt[*]} from Debian's packages" >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
export PATH=$PATH:/usr/sbin
# The Debian package starts its own nsd on port 53; this script runs its own and leaves that
# one alone.

echo "building latch (release)" >&2
cargo build --release --bin latch >&2
LATCH=${CARGO_TARGET_DIR:-$ROOT/target}/release/latch

WORK=$(mktemp -d "${TMPDIR:-/var/tmp}/latch-dns.XXXXXX")
PIDS=()
LATCH_PID=
NSD_PID=
stop_servers() {
  local pid
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  PIDS=()
  LATCH_PID=
  NSD_PID=
}
finish() {
  stop_servers
  if [ "${KEEP_WORK:-0}" = 1 ]; then echo "data and logs kept in $WORK" >&2; else rm -rf "$WORK"; fi
}
trap finish EXIT
trap 'echo "bench/dns.sh: a command failed at line $LINENO (exit $?)" >&2' ERR

wait_for() { # what, command...
  local what=$1
  shift
  for _ in $(seq 1 150); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.2
  done
  echo "timed out waiting for $what; logs in $WORK" >&2
  KEEP_WORK=1
  exit 1
}
alive() { # every server started still runs
  local pid
  for pid in "${PIDS[@]}"; do kill -0 "$pid" 2>/dev/null || {
    echo "server pid $pid died; logs in $WORK" >&2
    return 1
  }; done
}
dig_short() { # addr name [dig flags…]: the sorted answer records' data
  local addr=$1 name=$2
  shift 2
  dig @"${addr%:*}" -p "${addr#*:}" "$name" A +short +time=2 +tries=1 "$@" | sort
}

SERVER_COMMANDS="$WORK/servers.txt"
: >"$SERVER_COMMANDS"
# A fresh single-member Latch cluster, as it ships (its default log filter: no line per DNS
# query; RUST_LOG is cleared so that the caller's does not change that). Sets LATCH_PID. Its log
# is a file in $WORK (emptied before each run, in case a filter that logs per query is set).
start_latch() {
  rm -rf "$WORK/latch-data"
  local cmd=("$LATCH" server --id 1 --data-dir "$WORK/latch-data" --client-addr "$CLIENT_ADDR"
    --peer-addr 127.0.0.1:19380 --http-addr 127.0.0.1:19381 --dns-addr "$LATCH_DNS"
    --initial-cluster 1=127.0.0.1:19380)
  echo "latch ${cmd[*]:1}" >>"$SERVER_COMMANDS"
  env -u RUST_LOG "${cmd[@]}" >>"$WORK/latch.log" 2>&1 &
  LATCH_PID=$!
  PIDS+=("$LATCH_PID")
  wait_for "latch to have a leader" sh -c \
    "'$LATCH' cluster status --endpoints '$CLIENT_ADDR' --output json | grep -q '\"leader\":[1-9]'"
  alive || {
    KEEP_WORK=1
    exit 1
  }
}

# `web` with 3 instances, answered by the member's DNS port.
register_web() {
  local i cmd
  for i in 1 2 3; do
    cmd=(svc register web --id "web-$i" --address "10.0.0.$i" --port 8080 --endpoints "$CLIENT_ADDR")
    echo "latch ${cmd[*]}" >>"$SERVER_COMMANDS"
    "$LATCH" "${cmd[@]}" >&2
  done
  wait_for "latch's DNS port to answer web's 3 instances" \
    sh -c "[ \"\$(dig @${LATCH_DNS%:*} -p ${LATCH_DNS#*:} web.service.latch A +short +time=1 +tries=1 | wc -l)\" = 3 ]"
}

# A fresh NSD serving web.service.latch. with the records Latch answers; sets NSD_PID.
start_nsd() {
  local dir=$WORK/nsd addresses a
  rm -rf "$dir"
  mkdir -p "$dir"
  addresses=$(dig_short "$LATCH_DNS" web.service.latch)
  {
    echo "\$ORIGIN latch."
    echo "\$TTL 5"
    echo "@ IN SOA ns.latch. hostmaster.latch. 1 3600 600 86400 5"
    echo "@ IN NS ns.latch."
    echo "ns IN A 127.0.0.1"
    for a in $addresses; do echo "web.service IN A $a"; done
  } >"$dir/latch.zone"
  cat >"$dir/nsd.conf" <<EOF
server:
  ip-address: ${NSD_DNS%:*}@${NSD_DNS#*:}
  do-ip6: no
  server-count: $NSD_SERVERS
  username: ""
  chroot: ""
  zonesdir: "$dir"
  database: ""
  zonelistfile: "$dir/zone.list"
  xfrdfile: "$dir/xfrd.state"
  xfrdir: "$dir"
  pidfile: "$dir/nsd.pid"
  logfile: "$dir/nsd.log"
  verbosity: 1
  hide-version: yes
  round-robin: yes
  minimal-responses: yes
  rrl-ratelimit: 0
  rrl-whitelist-ratelimit: 0
remote-control:
  control-enable: no
zone:
  name: "latch."
  zonefile: "$dir/latch.zone"
EOF
  nsd-checkconf "$dir/nsd.conf"
  echo "nsd -d -c nsd.conf  # $(grep -c 'IN A 10' "$dir/latch.zone") A records for web.service.latch.; nsd.conf: $(grep -E 'server-count|round-robin|minimal-responses|rrl-' "$dir/nsd.conf" | tr -s ' \n' ' ')" >>"$SERVER_COMMANDS"
  nsd -d -c "$dir/nsd.conf" >"$dir/nsd.out" 2>&1 &
  NSD_PID=$!
  PIDS+=("$NSD_PID")
  wait_for "nsd to answer" sh -c "[ \"\$(dig @${NSD_DNS%:*} -p ${NSD_DNS#*:} web.service.latch A +short +time=1 +tries=1 | wc -l)\" = 3 ]"
  if [ "$(dig_short "$NSD_DNS" web.service.latch)" != "$addresses" ]; then
    echo "nsd does not answer the records latch answers; logs in $WORK" >&2
    KEEP_WORK=1
    exit 1
  fi
}

RESULTS="$WORK/results.jsonl"
COMMANDS="$WORK/commands.txt"
: >"$RESULTS"
: >"$COMMANDS"
# Runs one command and prints its JSON report extended with the server, the round and the
# load average before it; the CPU the server's processes (the pids given and their
# descendants: NSD forks its servers) and the command spent in the timed phase, per query and
# as cores kept busy; and the cores the rest of the machine kept busy over the whole command.
# The CPU counters are sampled every 50 ms; the timed phase is the report's elapsed_s before
# the command exited.
cat >"$WORK/run_one.py" <<'PY'
import json, os, resource, subprocess, sys, threading, time
server, round_, roots = sys.argv[1], int(sys.argv[2]), [int(p) for p in sys.argv[3].split()]
command = sys.argv[4:]
tick = os.sysconf("SC_CLK_TCK")
def stat(pid):
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()
def tree(roots):  # the roots and all their descendants
    children = {}
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                children.setdefault(int(stat(p)[1]), []).append(int(p))
            except (OSError, IndexError):
                pass
    found, todo = [], list(roots)
    while todo:
        p = todo.pop()
        found.append(p)
        todo.extend(children.get(p, []))
    return found
pids = tree(roots)
def cpu_s(pid):  # user + system seconds of a process, all its threads
    fields = stat(pid)
    return (int(fields[11]) + int(fields[12])) / tick
def servers_s():
    total = 0.0
    for p in pids:
        try:
            total += cpu_s(p)
        except (OSError, IndexError):
            pass
    return total
def machine_busy_s():
    with open("/proc/stat") as f:
        cpu = [int(x) for x in f.readline().split()[1:]]
    return (sum(cpu) - cpu[3] - cpu[4]) / tick  # all but idle and iowait
def children_s():
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime
load = open("/proc/loadavg").read().split()[0]
samples = []
base, m0, t0 = children_s(), machine_busy_s(), time.monotonic()
s0 = servers_s()
run = subprocess.Popen(command, stdout=subprocess.PIPE)
stop = threading.Event()
def sample():
    while not stop.is_set():
        t = time.monotonic()
        try:
            samples.append((t, servers_s(), cpu_s(run.pid)))
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
s1, b1, m1 = servers_s(), children_s() - base, machine_busy_s()
samples.append((end, s1, b1))
def at(t, k):  # the k-th counter at time t, interpolated between samples
    before = [s for s in samples if s[0] <= t]
    after = [s for s in samples if s[0] >= t]
    if not before:
        return after[0][k]
    a, b = before[-1], after[0]
    return a[k] if b[0] == a[0] else a[k] + (b[k] - a[k]) * (t - a[0]) / (b[0] - a[0])
report = json.loads(stdout)
elapsed = max(report["elapsed_s"], 1e-3)
start = end - elapsed
queries = max(report["ops"], 1)
servers, bench = at(end, 1) - at(start, 1), at(end, 2) - at(start, 2)
wall = end - t0
report.update(server=server, round=round_, load_before=float(load), wall_s=wall,
              server_us_per_query=servers / queries * 1e6, bench_us_per_query=bench / queries * 1e6,
              server_cores=servers / elapsed, bench_cores=bench / elapsed,
              other_cores=max(0.0, (m1 - m0) - (s1 - s0) - b1) / wall)
print(json.dumps(report))
PY

# One `latch bench dns` run of web.service.latch.; its extended report is appended to $RESULTS
# unless told otherwise.
run_dns() { # server clients duration [results]
  local server=$1 clients=$2 duration=$3 results=${4:-$RESULTS} addr pid
  case $server in
    latch) addr=$LATCH_DNS pid=$LATCH_PID ;;
    nsd) addr=$NSD_DNS pid=$NSD_PID ;;
  esac
  for log in "$WORK"/latch*.log; do [ -e "$log" ] && : >"$log"; done
  local flags=(--dns-addr "$addr" --service web --clients "$clients" --duration "$duration" --output json)
  [ "$results" = "$RESULTS" ] && echo "latch bench dns ${flags[*]}  # $server" >>"$COMMANDS"
  echo "round $ROUND  $server  clients=$clients  $duration  (load average $(cut -d' ' -f1-3 /proc/loadavg))" >&2
  if ! python3 "$WORK/run_one.py" "$server" "$ROUND" "$pid" "$LATCH" bench dns "${flags[@]}" >>"$results"; then
    echo "latch bench dns failed against $server; logs in $WORK" >&2
    KEEP_WORK=1
    exit 1
  fi
  alive || {
    KEEP_WORK=1
    exit 1
  }
}

LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
read -r -a SERVERS <<<"$SERVERS"
read -r -a CLIENT_COUNTS <<<"$CLIENTS"
MAX_CLIENTS=$(printf '%s\n' "${CLIENT_COUNTS[@]}" | sort -n | tail -1)
for ROUND in $(seq 1 "$ROUNDS"); do
  echo "== round $ROUND: fresh servers: ${SERVERS[*]}" >&2
  start_latch
  register_web
  start_nsd
  for server in "${SERVERS[@]}"; do run_dns "$server" "$MAX_CLIENTS" "$WARMUP" /dev/null; done
  i=0
  for clients in "${CLIENT_COUNTS[@]}"; do
    # Alternate, rotating which server goes first, so that neither always meets a busier machine.
    for k in "${!SERVERS[@]}"; do
      run_dns "${SERVERS[$(((ROUND - 1 + i + k) % ${#SERVERS[@]}))]}" "$clients" "$DURATION"
    done
    i=$((i + 1))
  done
  stop_servers
done

# The registry: INSTANCES instances of `reg`, then BIG of `big`, on one fresh member.
echo "== the registry: $INSTANCES instances, then a service of $BIG" >&2
ROUND=0
start_latch
REGISTRY="$WORK/registry.jsonl"
: >"$REGISTRY"
registry() { # label flags…: one `latch bench registry` run, its report appended to $REGISTRY
  local label=$1
  shift
  local flags=(--target "latch://$CLIENT_ADDR" --rss-pid "$LATCH_PID" "$@" --output json)
  echo "latch bench registry ${flags[*]}" | sed "s/--rss-pid $LATCH_PID/--rss-pid PID/" >>"$COMMANDS"
  echo "registry: $label  (load average $(cut -d' ' -f1-3 /proc/loadavg))" >&2
  "$LATCH" bench registry "${flags[@]}" | python3 -c '
import json, sys
r = json.loads(sys.stdin.read())
r["label"], r["load_before"] = sys.argv[1], float(sys.argv[2])
print(json.dumps(r))' "$label" "$(cut -d' ' -f1 /proc/loadavg)" >>"$REGISTRY"
  alive || {
    KEEP_WORK=1
    exit 1
  }
}
IDLE_RSS=$(awk '/^VmRSS/ {print $2}' "/proc/$LATCH_PID/status")
registry "List, 1 client" --service reg --instances "$INSTANCES" --registrars 64 --clients 1 --ops 100
registry "List, 16 clients" --service reg --instances "$INSTANCES" --registered --clients 16 --duration 10s
registry "List, 1 client" --service big --instances "$BIG" --registrars 64 --clients 1 --ops 100

# dig of the big service: flags, answer records, size; and of the 10,000 over TCP.
DIGS="$WORK/digs.txt"
: >"$DIGS"
dig_case() { # label name flags…
  local label=$1 name=$2 out
  shift 2
  out=$(dig @"${LATCH_DNS%:*}" -p "${LATCH_DNS#*:}" "$name" A +time=5 +tries=1 "$@" 2>&1 || true)
  local flags answers size retried
  flags=$(sed -n 's/^;; flags: \([^;]*\);.*/\1/p' <<<"$out" | tail -1)
  answers=$(sed -n 's/.*ANSWER: \([0-9]*\),.*/\1/p' <<<"$out" | tail -1)
  size=$(sed -n 's/^;; MSG SIZE  rcvd: \([0-9]*\).*/\1/p' <<<"$out" | tail -1)
  retried=$(grep -c 'Truncated, retrying in TCP mode' <<<"$out" || true)
  [ -n "$flags" ] || flags="(no answer: $(grep -m1 -E 'timed out|error|failed|refused' <<<"$out" | sed 's/^;; //' || echo '?'))"
  printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$label" "dig $name A $*" "$flags" "${answers:-–}" "${size:-–}" "$retried" >>"$DIGS"
}
dig_case "UDP, no EDNS (512 bytes)" big.service.latch +ignore +noedns
dig_case "UDP, EDNS 1232 bytes (dig's default)" big.service.latch +ignore
dig_case "UDP, EDNS 4096 bytes" big.service.latch +ignore +bufsize=4096
dig_case "TCP" big.service.latch +tcp
dig_case "as a resolver asks: UDP, then TCP on TC" big.service.latch
dig_case "TCP, the $INSTANCES-instance service" reg.service.latch +tcp
echo "dig @${LATCH_DNS%:*} -p ${LATCH_DNS#*:} NAME A +time=5 +tries=1 [flags of each line below]" >>"$COMMANDS"

# `latch bench dns` of the big services over UDP: truncated answers.
BIGDNS="$WORK/bigdns.jsonl"
: >"$BIGDNS"
for name in big reg; do
  flags=(--dns-addr "$LATCH_DNS" --service "$name" --clients 16 --duration 5s --output json)
  echo "latch bench dns ${flags[*]}" >>"$COMMANDS"
  python3 "$WORK/run_one.py" latch 0 "$LATCH_PID" "$LATCH" bench dns "${flags[@]}" >>"$BIGDNS"
done
FINAL_RSS=$(awk '/^VmRSS/ {print $2}' "/proc/$LATCH_PID/status")
stop_servers

LATCH_VERSION="$("$LATCH" --version) ($(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD -- src 2>/dev/null || echo ', with uncommitted changes'))"
NSD_VERSION=$(nsd -v 2>&1 | sed -n 1p)
DIG_VERSION=$(dig -v 2>&1 | sed -n 1p)
CPU_MODEL=$(grep -m1 '^model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//' || echo unknown)
FACTS="$(nproc) cores ($CPU_MODEL); load average before the runs $LOAD_START; $LATCH_VERSION; $NSD_VERSION; $DIG_VERSION"

python3 - "$RESULTS" "$REGISTRY" "$DIGS" "$BIGDNS" "$DURATION" "$WARMUP" "$ROUNDS" "$FACTS" "$COMMANDS" \
  "$SERVER_COMMANDS" "$OUT" "$SECTION" "$MARKER" "$IDLE_RSS" "$FINAL_RSS" "$NSD_SERVERS" "$INSTANCES" "$BIG" <<'PY'
import datetime, json, os, statistics, sys, textwrap
(results, registry, digs, bigdns, duration, warmup, rounds, facts, commands, servers, out, section,
 marker, idle_rss, final_rss, nsd_servers, instances, big) = sys.argv[1:]
runs = [json.loads(l) for l in open(results) if l.strip()]
regs = [json.loads(l) for l in open(registry) if l.strip()]
bigs = [json.loads(l) for l in open(bigdns) if l.strip()]
dig_rows = [l.rstrip("\n").split("\t") for l in open(digs) if l.strip()]
NAMES = {"latch": "Latch", "nsd": "NSD"}
ORDER = {"latch": 0, "nsd": 1}
wrap = lambda l: textwrap.fill(l, 100, break_on_hyphens=False, break_long_words=False) if l else l

groups = {}
for r in runs:
    groups.setdefault((r["clients"], r["server"]), []).append(r)
rows, qps = [], {}
for (clients, server), rs in sorted(groups.items(), key=lambda g: (g[0][0], ORDER[g[0][1]])):
    med = lambda f: statistics.median(f(r) for r in rs)
    codes, errors = {}, {}
    for r in rs:
        for k, n in r["outcomes"].items():
            codes[k] = codes.get(k, 0) + n
        for k, n in r["errors"].items():
            errors[k] = errors.get(k, 0) + n
    q = [r["throughput"] for r in rs]
    qps[(clients, server)] = statistics.median(q)
    p = lambda name: (lambda r: r["parameters"][name])
    rows.append({
        "server": server, "clients": clients, "n": len(rs), "qps": statistics.median(q), "min": min(q), "max": max(q),
        "p50": med(lambda r: r["latency_ms"]["p50"]), "p99": med(lambda r: r["latency_ms"]["p99"]),
        "p999": med(lambda r: r["latency_ms"]["p999"]),
        "lost": sum(r["parameters"]["lost"] for r in rs), "errors": errors, "codes": codes,
        "records": (min(p("answers_min")(r) for r in rs), max(p("answers_max")(r) for r in rs)),
        "truncated": sum(p("truncated")(r) for r in rs), "empty": sum(p("empty_answers")(r) for r in rs),
        "server_us": med(lambda r: r["server_us_per_query"]), "bench_us": med(lambda r: r["bench_us_per_query"]),
        "server_cores": med(lambda r: r["server_cores"]), "bench_cores": med(lambda r: r["bench_cores"]),
        "other": med(lambda r: r["other_cores"]),
        "load": (min(r["load_before"] for r in rs), max(r["load_before"] for r in rs)),
    })
example = {}
for r in runs:
    example.setdefault(r["server"], r["parameters"].get("example", []))

L = [section, "",
     f"`bench/dns.sh`, {datetime.date.today()}: {rounds} round(s); in each, a fresh single-member Latch "
     "cluster on 127.0.0.1 with the service `web` registered with 3 instances (`latch svc register`) as it "
     "ships (its default log filter, `info,hickory_server=warn,hickory_proto=warn,hickory_net=warn`: no "
     "line per query), and a fresh NSD serving a zone file with the same A records for `web.service.latch.` (read back from Latch "
     "with dig; the same TTL; plus the SOA and NS NSD needs), with round-robin and minimal responses as Latch "
     f"answers, its response rate limiting off, server-count {nsd_servers}. After an untimed warm-up of "
     f"{warmup} against each, `latch bench dns` measures both with the same flags, alternating (rotating which "
     f"goes first), {duration} per run: UDP A lookups of `web.service.latch.` from N clients, each its own "
     "socket with one query in flight (the query encoded once, answers read from their header and question); "
     "a query unanswered within 1 s is *lost*. Medians over the rounds; lost and answers summed. CPU: what the "
     "server (NSD: all its processes) and the load generator spent in the timed phase (sampled every 50 ms), "
     "per query and as cores kept busy; *other load*: the cores the rest of the machine kept busy over the "
     "whole command (other work on this shared machine shows here); *load before*: the 1-minute load average "
     "before each run, lowest–highest.",
     "", f"{facts}.", ""]
L = [wrap(l) for l in L]
L += ["| server | clients | queries/s | queries/s, min–max | p50 ms | p99 ms | p999 ms | lost | answers | "
      "records per answer | servers' CPU µs/query | bench CPU µs/query | server cores | bench cores | "
      "other load (cores) | load before |",
      "|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
for r in rows:
    codes = ", ".join(f"{k} {v:,}" for k, v in sorted(r["codes"].items()))
    errors = "".join(f", {k} {v:,}" for k, v in sorted(r["errors"].items()) if k != "LOST")
    lo, hi = r["records"]
    L.append(f"| {NAMES[r['server']]} | {r['clients']} | {r['qps']:,.0f} | {r['min']:,.0f}–{r['max']:,.0f} | "
             f"{r['p50']:.3f} | {r['p99']:.3f} | {r['p999']:.2f} | {r['lost']:,} | {codes}{errors} | "
             f"{lo if lo == hi else f'{lo}–{hi}'} | {r['server_us']:.1f} | {r['bench_us']:.1f} | "
             f"{r['server_cores']:.2f} | {r['bench_cores']:.2f} | {r['other']:.2f} | {r['load'][0]:.1f}–{r['load'][1]:.1f} |")
L += [""]
for server in ("latch",):
    shares = []
    for clients in sorted({c for c, _ in qps}):
        if (clients, server) in qps and (clients, "nsd") in qps and qps[(clients, "nsd")] > 0:
            lost = sum(r["lost"] for r in rows if r["clients"] == clients and r["server"] == server)
            shares.append(f"{clients} clients: {100 * qps[(clients, server)] / qps[(clients, 'nsd')]:.0f} % "
                          f"({lost:,} lost)")
    if shares:
        L += [wrap(f"{NAMES[server]}: queries/s as a share of NSD's (goal: at least 50 % with no lost query): "
                   + "; ".join(shares) + "."), ""]
for server in ("latch", "nsd"):
    if example.get(server):
        L += [wrap(f"{NAMES[server]}'s answer (the first client's probe, before the clock): "
                   + "; ".join(f"`{e}`" for e in example[server])), ""]

L += [f"### A registry of {int(instances):,} instances", "",
      wrap(f"One fresh member (the same flags). `latch bench registry` registers the instances through the "
           "Registry gRPC service, 64 in flight (`Register`, one log entry each; not timed as the run's "
           "operations but measured: registrations/s and their latency), then times `List` of the service "
           "(linearizable: a ReadIndex, then one read transaction) from the clients given. *RSS*: the member's "
           f"VmRSS before registering, after, and after the Lists; {int(idle_rss):,} KiB before anything was "
           f"registered, {int(final_rss):,} KiB at the end (after the DNS runs below)."), "",
      "| service | instances | registered/s | register p50 ms | register p99 ms | List clients | Lists/s | "
      "List p50 ms | List p99 ms | instances per List | List bytes | outcomes | errors | RSS KiB: before → registered → after Lists |",
      "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|---|"]
for r in regs:
    p = r["parameters"]
    reg = p["registered"] > 0
    errors = ", ".join(f"{k} {v}" for k, v in sorted(r["errors"].items())) or "0"
    outcomes = ", ".join(f"{k} {v}" for k, v in sorted(r["outcomes"].items()))
    rss = " → ".join(f"{v:,}" if isinstance(v, int) else "–" for v in
                     (p["rss_kib_before"], p["rss_kib_registered"], p["rss_kib_after"]))
    if reg:
        registered = f"{p['registers_per_s']:,.0f} | {p['register_p50_ms']:.2f} | {p['register_p99_ms']:.2f}"
    else:
        registered = "(registered above) | – | –"
    cut = " (cut)" if p["list_more"] else ""
    L.append(f"| `{p['service']}` | {p['instances']:,} | {registered} | {r['clients']} | {r['throughput']:,.1f} | "
             f"{r['latency_ms']['p50']:.2f} | {r['latency_ms']['p99']:.2f} | {p['list_instances']:,}{cut} | "
             f"{p['list_bytes']:,} | {outcomes} | {errors} | {rss} |")
L += ["", f"### DNS answers of a service of {int(big):,} instances", "",
      wrap(f"dig against the member's DNS port (`big.service.latch.`, then the {int(instances):,}-instance service over "
           "TCP). *Flags*: the answer's header flags (`tc`: truncated); *answer records*: the records in the "
           "answer dig got; *retried over TCP*: dig saw TC and asked again over TCP, as a resolver does."), "",
      "| case | command | flags | answer records | bytes | retried over TCP |",
      "|---|---|---|---:|---:|---:|"]
for label, command, flags, answers, size, retried in dig_rows:
    L.append(f"| {label} | `{command}` | {flags} | {answers} | {size} | {'yes' if retried not in ('', '0') else 'no'} |")
if bigs:
    L += ["", wrap("`latch bench dns` of the big services over UDP (16 clients, 5 s; no EDNS, so answers are held to "
                   "512 bytes):"), "",
          "| name | queries/s | p50 ms | p99 ms | lost | answers | truncated | records per answer | server's CPU µs/query |",
          "|---|---:|---:|---:|---:|---|---:|---:|---:|"]
    for r in bigs:
        p = r["parameters"]
        codes = ", ".join(f"{k} {v:,}" for k, v in sorted(r["outcomes"].items()))
        errors = "".join(f", {k} {v:,}" for k, v in sorted(r["errors"].items()) if k != "LOST")
        rec = p["answers_min"] if p["answers_min"] == p["answers_max"] else f"{p['answers_min']}–{p['answers_max']}"
        L.append(f"| `{p['name']}` | {r['throughput']:,.0f} | {r['latency_ms']['p50']:.3f} | {r['latency_ms']['p99']:.3f} | "
                 f"{p['lost']:,} | {codes}{errors} | {p['truncated']:,} | {rec} | {r['server_us_per_query']:.1f} |")
L += ["", "Servers (fresh for each round):", "", "```"]
L += list(dict.fromkeys(l.rstrip() for l in open(servers) if l.strip()))
L += ["```", "", "Runs:", "", "```"]
L += list(dict.fromkeys(l.strip() for l in open(commands) if l.strip()))
L += ["```"]
text = "\n".join(L) + "\n"
print(text, end="")
if out != "-":
    # Replace this script's part of its section (from its heading to the marker line, or to the
    # next "## " heading when there is no marker); keep the hand-written rest and the other sections.
    lines = open(out).read().splitlines() if os.path.exists(out) else []
    start = next((i for i, l in enumerate(lines) if l.startswith(section)), None)
    if start is None:
        before, kept, after = lines, [marker], []
    else:
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
        mark = next((i for i in range(start + 1, end) if lines[i].strip() == marker), None)
        before, after = lines[:start], lines[end:]
        kept = lines[mark:end] if mark is not None else [marker]
    while before and not before[-1].strip():
        before.pop()
    while kept and not kept[-1].strip():
        kept.pop()
    body = ("\n".join(before) + "\n\n" if before else "") + text + "\n" + "\n".join(kept) + "\n"
    if after:
        body += "\n" + "\n".join(after) + "\n"
    open(out, "w").write(body)
    print(f"wrote the section into {out}", file=sys.stderr)
PY
