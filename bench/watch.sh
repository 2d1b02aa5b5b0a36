#!/usr/bin/env bash
# Watches, Latch next to etcd, on this machine (issue 10): ROUNDS rounds; in each, for each
# system in turn (rotating which goes first), a fresh 3-member cluster on 127.0.0.1 (etcd from
# Debian's `etcd-server`; both fsync their log before they acknowledge a write), an untimed
# warm-up of WARMUP with 100 watchers, then `latch bench watch-latency` with each of WATCHERS
# watchers on that one cluster, DURATION each. One writer puts keys bench/watch/0, 1, … one at a
# time; every watcher watches the prefix bench/watch/ on a stream of its own, or with STREAMS set,
# the watchers share at most that many streams, `--watches-per-stream` = watchers / STREAMS rounded
# up (100 watchers and STREAMS=16 take 15 streams of 7). Latch: a watch group per stream, which the
# members answer with shared responses; etcd: that many creates on one Watch stream. The streams
# spread over CONNECTIONS client connections (default: the bench's, the smaller of the streams and
# 16) and so over the members. Each event is timed from the instant its put's answer reached the
# writer to the instant it reached the watcher, clamped at 0. See src/bench/watches.rs.
#
# Prints a markdown section "## Watches (issue 10)", medians over the rounds: system, watchers,
# puts/s, events delivered per second, event latency p50/p99/max, the share of events that
# reached their watcher before the put's answer reached the writer (timed as 0), missed events
# (must be 0), how long the last put took to reach every watcher, errors; the CPU the system's
# three servers and the load generator spent in the timed phase, per event and as cores, and
# the cores the rest of the machine kept busy meanwhile. Writes it into OUT (default
# docs/benchmarks.md), replacing the section of that name if there is one and keeping every
# other section; OUT=- prints it only.
#
#   bench/watch.sh
#   ROUNDS=1 DURATION=5s WATCHERS="100 1000" SYSTEMS=latch OUT=- bench/watch.sh
#
# Which member leads, and whether the writer talks to it, decides much of the 100-watcher
# figure (docs/benchmarks.md): LEADER=N makes member N lead every cluster (Latch: fresh clusters
# until it does; etcd: `etcdctl move-leader`), WRITER_MEMBER=N sends every put to member N
# (`--writer-member`; unset: Latch's writer keeps to member 1, etcd-client balances its puts
# over all three). The report counts the runs in which the writer's member led.
#
# Environment: ROUNDS (1), DURATION per run (15s), WARMUP per system, untimed (3s), WATCHERS
# ("100 1000 10000"), STREAMS (unset: a stream per watcher), CONNECTIONS (unset: the bench's
# default), SYSTEMS ("latch etcd"), LEADER and WRITER_MEMBER (unset), OUT
# (docs/benchmarks.md), KEEP_WORK=1 to keep the servers' data and logs. Needs cargo and
# python3; etcd, etcdctl and protoc are installed with apt-get if missing. Stops every process it
# started, by pid, on any exit. A run that fails, or a server that dies, stops the script with
# exit 1.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
DURATION=${DURATION:-15s}
WARMUP=${WARMUP:-3s}
WATCHERS=${WATCHERS:-"100 1000 10000"}
CONNECTIONS=${CONNECTIONS:-}
STREAMS=${STREAMS:-}
LEADER=${LEADER:-}
WRITER_MEMBER=${WRITER_MEMBER:-}
for n in "$LEADER" "$WRITER_MEMBER"; do
  case $n in "" | 1 | 2 | 3) ;; *) echo "LEADER and WRITER_MEMBER name a member, 1, 2 or 3; got '$n'" >&2; exit 2 ;; esac
done
SYSTEMS=${SYSTEMS:-"latch etcd"}
ROUNDS=${ROUNDS:-1}
OUT=${OUT:-docs/benchmarks.md}
SECTION="## Watches (issue 10)"

need_apt=()
command -v etcd >/dev/null 2>&1 || need_apt+=(etcd-server)
command -v etcdctl >/dev/null 2>&1 || need_apt+=(etcd-client)
command -v protoc >/dev/null 2>&1 || need_apt+=(protobuf-compiler)
if ((${#need_apt[@]})); then
  echo "installing ${need_apt[*]} from Debian's packages" >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

# The features of bench/compare.sh's and bench/locks.sh's build: one binary serves all three.
echo "building latch (release, with the etcd and zk targets)" >&2
cargo build --release --features etcd,zk --bin latch >&2
LATCH=${CARGO_TARGET_DIR:-$ROOT/target}/release/latch

WORK=$(mktemp -d "${TMPDIR:-/var/tmp}/latch-watch.XXXXXX")
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
trap 'echo "bench/watch.sh: a command failed at line $LINENO (exit $?)" >&2' ERR

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
alive() { # every server started still runs
  local pid
  for pid in "${PIDS[@]}"; do kill -0 "$pid" 2>/dev/null || { echo "server pid $pid died; logs in $WORK" >&2; return 1; }; done
}

SERVER_COMMANDS="$WORK/servers.txt"
: >"$SERVER_COMMANDS"
# Starts a fresh 3-member cluster of the system (the ports of bench/compare.sh) and sets TARGET
# to the --target naming all three members.
start_once() { # system
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
          --initial-cluster-state new --initial-cluster-token latch-watch --log-level error)
        echo "${cmd[*]}" >>"$SERVER_COMMANDS"
        "${cmd[@]}" >"$WORK/etcd$i.log" 2>&1 &
        PIDS+=($!)
      done
      TARGET="etcd://127.0.0.1:23791,127.0.0.1:23792,127.0.0.1:23793"
      wait_for "etcd to be healthy" env ETCDCTL_API=3 etcdctl --endpoints "${TARGET#etcd://}" endpoint health
      ;;
  esac
  # A server that could not start (a port in use, say) must not go unnoticed: another process
  # on the same port would be measured instead.
  alive || { KEEP_WORK=1; exit 1; }
}

# One line per etcd member: its number (the client port's last digit), its id in hex, and
# whether it leads.
etcd_members() {
  ETCDCTL_API=3 etcdctl --endpoints "${TARGET#etcd://}" endpoint status -w json | python3 -c '
import json, sys
for e in json.load(sys.stdin):
    s = e["Status"]
    print(e["Endpoint"][-1], format(s["header"]["member_id"], "x"), int(s["header"]["member_id"] == s["leader"]))'
}

# The member (1, 2 or 3) that leads the running cluster of the system.
leader_of() { # system
  case $1 in
    latch)
      "$LATCH" cluster status --endpoints "${TARGET#latch://}" --output json | grep -o '"leader":[0-9]*' | cut -d: -f2
      ;;
    etcd) etcd_members | awk '$3 == 1 { print $1 }' ;;
  esac
}

# Starts a fresh cluster of the system (start_once); with LEADER set, one member LEADER leads.
start() { # system
  start_once "$1"
  [ -z "$LEADER" ] && return 0
  local try
  for try in $(seq 1 20); do
    [ "$(leader_of "$1")" = "$LEADER" ] && return 0
    case $1 in
      latch) stop_servers && start_once latch ;;
      etcd)
        local id
        id=$(etcd_members | awk -v n="$LEADER" '$1 == n { print $2 }')
        ETCDCTL_API=3 etcdctl --endpoints "${TARGET#etcd://}" move-leader "$id" >/dev/null 2>&1 || sleep 0.5
        ;;
    esac
  done
  echo "member $LEADER of $1 did not lead after 20 tries; logs in $WORK" >&2
  KEEP_WORK=1
  exit 1
}

RESULTS="$WORK/results.jsonl"
COMMANDS="$WORK/commands.txt"
: >"$RESULTS"
: >"$COMMANDS"
# Runs one command and prints its JSON report extended with the system and the round; the CPU
# the servers (pids given) and the command spent in the timed phase, per event received and as
# cores kept busy; and the cores the rest of the machine kept busy over the whole command
# (other work on a shared machine shows here). The CPU counters are sampled every 50 ms; the
# timed phase is taken as the report's elapsed_s before the command exited, so it includes
# closing the watches (after the last event) and leaves out as long a slice of its start.
cat >"$WORK/run_one.py" <<'PY'
import json, os, resource, subprocess, sys, threading, time
system, round_, pids = sys.argv[1], int(sys.argv[2]), sys.argv[3].split()
command = sys.argv[4:]
tick = os.sysconf("SC_CLK_TCK")
def cpu_s(pid):  # user + system seconds of a process, all its threads
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / tick
def machine_busy_s():
    with open("/proc/stat") as f:
        cpu = [int(x) for x in f.readline().split()[1:]]
    return (sum(cpu) - cpu[3] - cpu[4]) / tick  # all but idle and iowait
def children_s():
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime
samples = []
base, m0, t0 = children_s(), machine_busy_s(), time.monotonic()
s0 = sum(cpu_s(p) for p in pids)
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
s1, b1, m1 = sum(cpu_s(p) for p in pids), children_s() - base, machine_busy_s()
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
events = max(report["ops"], 1)
servers, bench = at(end, 1) - at(start, 1), at(end, 2) - at(start, 2)
wall = end - t0
report.update(system=system, round=round_, wall_s=wall, leader=os.environ.get("LED_BY") or None,
              server_us_per_event=servers / events * 1e6, bench_us_per_event=bench / events * 1e6,
              server_cores=servers / elapsed, bench_cores=bench / elapsed,
              other_cores=max(0.0, (m1 - m0) - (s1 - s0) - b1) / wall)
print(json.dumps(report))
PY

# One `latch bench watch-latency` run; its extended report is appended to $RESULTS unless told
# otherwise.
run_one() { # system watchers duration [results]
  local system=$1 watchers=$2 duration=$3 results=${4:-$RESULTS}
  local flags=(--watchers "$watchers")
  [ -n "$STREAMS" ] && flags+=(--watches-per-stream $(((watchers + STREAMS - 1) / STREAMS)))
  [ -n "$CONNECTIONS" ] && flags+=(--connections "$CONNECTIONS")
  [ -n "$WRITER_MEMBER" ] && flags+=(--writer-member "$WRITER_MEMBER")
  [ "$results" = "$RESULTS" ] &&
    echo "latch bench watch-latency ${flags[*]} --target $TARGET --duration $duration --output json" >>"$COMMANDS"
  echo "round $ROUND  $system  watchers=$watchers  $duration  (load average $(cut -d' ' -f1 /proc/loadavg))" >&2
  local leader
  leader=$(leader_of "$system")
  if ! LED_BY=$leader python3 "$WORK/run_one.py" "$system" "$ROUND" "${PIDS[*]}" "$LATCH" bench watch-latency "${flags[@]}" \
    --target "$TARGET" --duration "$duration" --output json >>"$results"; then
    echo "latch bench watch-latency failed against $system; logs in $WORK" >&2
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
    run_one "$system" 100 "$WARMUP" /dev/null
    for watchers in $WATCHERS; do
      run_one "$system" "$watchers" "$DURATION"
    done
    stop_servers
  done
done

ETCD_VERSION=$(etcd --version 2>/dev/null | sed -n 1p)
LATCH_VERSION="$("$LATCH" --version) ($(git rev-parse --short HEAD 2>/dev/null || echo unknown))"
CPU_MODEL=$(grep -m1 '^model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//' || echo unknown)
FACTS="$(nproc) cores ($CPU_MODEL); load average before the runs $LOAD_START; $LATCH_VERSION; $ETCD_VERSION"

python3 - "$RESULTS" "$DURATION" "$WARMUP" "$ROUNDS" "$FACTS" "$COMMANDS" "$SERVER_COMMANDS" "$OUT" "$SECTION" <<'PY'
import datetime, json, os, statistics, sys, textwrap
results, duration, warmup, rounds, facts, commands, servers, out, section = sys.argv[1:]
runs = [json.loads(l) for l in open(results) if l.strip()]
NAMES = {"latch": "Latch", "etcd": "etcd"}
groups = {}
for r in runs:
    groups.setdefault((r["system"], r["parameters"]["watchers"]), []).append(r)
def writer_led(system, rs):
    # The writer's member: --writer-member, or (Latch) the first endpoint; etcd-client
    # otherwise balances the puts over the members.
    def member(r):
        pinned = r["parameters"].get("writer_member")
        return str(pinned) if pinned else ("1" if system == "latch" else None)
    if any(member(r) is None for r in rs):
        return "—"
    return f"{sum(r.get('leader') == member(r) for r in rs)} of {len(rs)}"
rows = []
for (system, watchers), rs in sorted(groups.items(), key=lambda g: (g[0][1], g[0][0] != "latch")):
    med = lambda f: statistics.median(f(r) for r in rs)
    p = lambda name: (lambda r: r["parameters"][name])
    errors = {}
    for r in rs:
        for kind, n in r["errors"].items():
            errors[kind] = errors.get(kind, 0) + n
    rows.append({
        "system": system, "watchers": watchers, "connections": rs[0]["connections"],
        "per_stream": rs[0]["parameters"].get("watches_per_stream", 1),
        "puts_per_s": med(lambda r: r["parameters"]["puts"] / r["elapsed_s"] if r["elapsed_s"] else 0),
        "events_per_s": med(lambda r: r["throughput"]),
        "p50": med(lambda r: r["latency_ms"]["p50"]), "p99": med(lambda r: r["latency_ms"]["p99"]),
        "max": med(lambda r: r["latency_ms"]["max"]),
        "early": med(lambda r: 100 * r["parameters"]["events_before_put_return"] / max(r["ops"], 1)),
        "put_p50": med(p("put_p50_ms")), "put_p99": med(p("put_p99_ms")),
        "missed": sum(r["parameters"]["missed_events"] for r in rs),
        "ended": sum(r["parameters"]["watches_ended"] for r in rs),
        "drain": med(p("drain_ms")), "errors": errors,
        "servers": med(lambda r: r["server_cores"]), "bench": med(lambda r: r["bench_cores"]),
        "server_us": med(lambda r: r["server_us_per_event"]), "bench_us": med(lambda r: r["bench_us_per_event"]),
        "other": med(lambda r: r["other_cores"]),
        "writer_led": writer_led(system, rs),
    })
L = [section, "",
     f"`bench/watch.sh`, {datetime.date.today()}: {rounds} round(s); in each, a fresh 3-member cluster of "
     "each system on 127.0.0.1 in turn (rotating which goes first; both fsync their log before they "
     f"acknowledge a write), an untimed warm-up of {warmup} with 100 watchers, then "
     f"`latch bench watch-latency` with each watcher count on that one cluster, {duration} each. One writer "
     "puts keys `bench/watch/0`, `1`, … one at a time (each put waits for its answer); every watcher "
     "watches the prefix `bench/watch/`, "
     + ("on a stream of its own (Latch: `Client::watch`; etcd: etcd-client's `watch` with a prefix)"
        if all(r["per_stream"] == 1 for r in rows) else
        "*per stream* watches to a stream (Latch: a `Client::watch_group`, whose watches take shared "
        "responses; etcd: that many creates on one Watch stream through etcd-client's `Watcher::watch`)")
     + ", the streams spread over the connections and so over the "
     "members, every watch open before the clock starts. *Event latency* is from the instant a put's "
     "answer reached the writer to the instant its event reached a watcher, per event, clamped at 0; "
     "*before answer* is the share of events that reached their watcher first (timed as 0). *Events/s* "
     "is all events received by all watchers over the wall time from the first put to the last event. "
     "*Missed*: revisions of answered puts a watcher never received (must be 0). *Drain*: how long "
     "after the last put's answer every watcher had it. CPU: what the system's three servers and the load "
     "generator spent in the timed phase (sampled every 50 ms; the report's elapsed time before the bench "
     "exited, so closing the watches is in, setting them up is not), per event received and as cores kept "
     "busy; *other load*: the cores the rest of the machine kept busy over the whole command. Medians over "
     "the rounds; missed and errors summed. *Writer's member led*: in how many runs the member the writer "
     "talked to led (the put's answer then leaves from the leader, ahead of the followers' events): "
     "`--writer-member` when given (WRITER_MEMBER), else member 1 for Latch's client, and — for etcd, "
     "whose client balances the writer's puts over the three members.",
     "", f"{facts}.", "",
     ]
# Prose wrapped at 100 columns, as the rest of docs/benchmarks.md.
L = [textwrap.fill(l, 100, break_on_hyphens=False, break_long_words=False) if l else l for l in L] + [
     "| system | watchers | per stream | connections | puts/s | put p50 ms | events/s | event p50 ms | event p99 ms | "
     "event max ms | before answer | missed | drain ms | errors | servers' CPU µs/event | bench CPU µs/event | "
     "servers' cores | bench cores | other load (cores) | writer's member led |",
     "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---|"]
for r in rows:
    errors = ", ".join(f"{k} {v}" for k, v in sorted(r["errors"].items())) or "0"
    L.append(f"| {NAMES[r['system']]} | {r['watchers']:,} | {r['per_stream']:,} | {r['connections']} | {r['puts_per_s']:,.0f} | "
             f"{r['put_p50']:.2f} | {r['events_per_s']:,.0f} | {r['p50']:.2f} | {r['p99']:.2f} | {r['max']:.1f} | "
             f"{r['early']:.0f}% | {r['missed']:,} | {r['drain']:,.0f} | {errors} | {r['server_us']:.1f} | "
             f"{r['bench_us']:.1f} | {r['servers']:.2f} | {r['bench']:.2f} | {r['other']:.2f} | {r['writer_led']} |")
L += ["", "Servers (data directories fresh for each system and round):", "", "```"]
L += list(dict.fromkeys(l.rstrip() for l in open(servers) if l.strip()))
L += ["```", "", "Runs:", "", "```"]
L += list(dict.fromkeys(l.strip() for l in open(commands) if l.strip()))
L += ["```"]
text = "\n".join(L) + "\n"
print(text, end="")
if out != "-":
    # Replace this script's section (from its heading to the next "## " one), keep the others.
    lines = open(out).read().splitlines() if os.path.exists(out) else []
    start = next((i for i, l in enumerate(lines) if l.startswith(section)), None)
    if start is None:
        before, after = lines, []
    else:
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
        before, after = lines[:start], lines[end:]
    while before and not before[-1].strip():
        before.pop()
    body = ("\n".join(before) + "\n\n" if before else "") + text + ("\n" + "\n".join(after) + "\n" if after else "")
    open(out, "w").write(body)
    print(f"wrote the section into {out}", file=sys.stderr)
PY
