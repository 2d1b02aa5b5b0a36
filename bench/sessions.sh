#!/usr/bin/env bash
# Sessions kept alive, Latch next to etcd's leases, on this machine, in one run: a 3-member
# cluster of each on 127.0.0.1 (etcd from Debian's `etcd-server`), the same load generator
# (`latch bench session-keepalive`), for each of SESSIONS (default "1000 10000 100000") sessions
# with a TTL of TTL (default 10s) kept alive for DURATION (default 30s) once all are created.
#
# Measured per system and session count: keepalive answer latency p50/p99 (the report), the
# leader's CPU (cores, /proc/PID/stat over the timed phase: from when the leader counts every
# session to the end of the run) and resident memory at the end, and sessions lost although
# kept alive (must be 0). Each system's cluster is fresh for each count.
#
# Writes a markdown report to OUT (default: stdout only). Needs: cargo, etcd (apt-get install
# etcd-server etcd-client; installed if missing and apt-get is there).
set -euo pipefail
cd "$(dirname "$0")/.."

SESSIONS=${SESSIONS:-"1000 10000 100000"}
SYSTEMS=${SYSTEMS:-"latch etcd"}
TTL=${TTL:-10s}
DURATION=${DURATION:-30s}
CONNECTIONS=${CONNECTIONS:-8}
OUT=${OUT:-}
WORK=$(mktemp -d /tmp/latch-sessions.XXXXXX)
trap 'pkill -P $$ 2>/dev/null || true; kill $(jobs -p) 2>/dev/null || true; rm -rf "$WORK"' EXIT

command -v etcd >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq etcd-server etcd-client >/dev/null; }
echo "building latch (release, with the etcd target)" >&2
cargo build --release --features etcd --bin latch >&2
LATCH=${CARGO_TARGET_DIR:-target}/release/latch
TICKS=$(getconf CLK_TCK)

start_latch() {
  local cluster="1=127.0.0.1:21380,2=127.0.0.1:22380,3=127.0.0.1:23380"
  for i in 1 2 3; do
    "$LATCH" server --id "$i" --data-dir "$WORK/latch$i" --client-addr "127.0.0.1:2${i}379" \
      --peer-addr "127.0.0.1:2${i}380" --http-addr "127.0.0.1:2${i}381" --dns-addr "127.0.0.1:2${i}600" --initial-cluster "$cluster" \
      >"$WORK/latch$i.log" 2>&1 &
    echo $! >"$WORK/latch$i.pid"
  done
  for _ in $(seq 100); do
    "$LATCH" cluster status --endpoints 127.0.0.1:21379 --output json 2>/dev/null | grep -q '"leader":[1-9]' && return
    sleep 0.2
  done
  echo "latch did not elect a leader" >&2; exit 1
}

start_etcd() {
  local cluster="e1=http://127.0.0.1:23801,e2=http://127.0.0.1:23802,e3=http://127.0.0.1:23803"
  for i in 1 2 3; do
    etcd --name "e$i" --data-dir "$WORK/etcd$i" \
      --listen-client-urls "http://127.0.0.1:2379$i" --advertise-client-urls "http://127.0.0.1:2379$i" \
      --listen-peer-urls "http://127.0.0.1:2380$i" --initial-advertise-peer-urls "http://127.0.0.1:2380$i" \
      --initial-cluster "$cluster" --initial-cluster-state new --initial-cluster-token latch-sessions \
      --log-level error >"$WORK/etcd$i.log" 2>&1 &
    echo $! >"$WORK/etcd$i.pid"
  done
  for _ in $(seq 100); do
    ETCDCTL_API=3 etcdctl --endpoints 127.0.0.1:23791 endpoint health >/dev/null 2>&1 && return
    sleep 0.2
  done
  echo "etcd did not become healthy" >&2; exit 1
}

stop_all() {
  for f in "$WORK"/*.pid; do [ -f "$f" ] && kill "$(cat "$f")" 2>/dev/null || true; done
  sleep 1
  for f in "$WORK"/*.pid; do [ -f "$f" ] && kill -9 "$(cat "$f")" 2>/dev/null || true; rm -f "$f"; done
  rm -rf "$WORK"/latch? "$WORK"/etcd?
}

# The pid of the system's leader.
leader_pid() {
  if [ "$1" = latch ]; then
    local id
    id=$("$LATCH" cluster status --endpoints 127.0.0.1:21379 --output json | sed 's/.*"leader":\([0-9]*\).*/\1/')
    cat "$WORK/latch$id.pid"
  else
    local i
    for i in 1 2 3; do
      if ETCDCTL_API=3 etcdctl --endpoints "127.0.0.1:2379$i" endpoint status -w json | python3 -c '
import json, sys
s = json.load(sys.stdin)[0]["Status"]
sys.exit(0 if s["header"]["member_id"] == s["leader"] else 1)'; then
        cat "$WORK/etcd$i.pid"
        return
      fi
    done
  fi
}

# How many sessions the leader counts (Latch: its metric; etcd: leases granted so far).
sessions_of() {
  if [ "$1" = latch ]; then
    local id
    id=$("$LATCH" cluster status --endpoints 127.0.0.1:21379 --output json | sed 's/.*"leader":\([0-9]*\).*/\1/')
    curl -s "127.0.0.1:2${id}381/metrics" | awk '/^latch_sessions /{print $2}'
  else
    curl -s 127.0.0.1:23791/metrics | awk '/^etcd_debugging_lease_granted_total /{print int($2)}'
  fi
}

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
rss_mib() { awk '/VmRSS/{printf "%.0f", $2 / 1024}' "/proc/$1/status"; }

ROWS=()
for n in $SESSIONS; do
  for system in $SYSTEMS; do
    echo "== $system, $n sessions" >&2
    if [ "$system" = latch ]; then start_latch; target="latch://127.0.0.1:21379,127.0.0.1:22379,127.0.0.1:23379"
    else
      # Every stream to the leader, as Latch's go: an etcd follower forwards each keepalive to
      # the leader one HTTP request at a time.
      start_etcd
      for i in 1 2 3; do [ "$(cat "$WORK/etcd$i.pid")" = "$(leader_pid etcd)" ] && target="etcd://127.0.0.1:2379$i"; done
    fi
    "$LATCH" bench session-keepalive --target "$target" --sessions "$n" --ttl "$TTL" --duration "$DURATION" \
      --clients "$CONNECTIONS" --connections "$CONNECTIONS" --timeout 30s --output json >"$WORK/report.json" &
    bench=$!
    # The timed phase begins once every session exists.
    for _ in $(seq 600); do
      have=$(sessions_of "$system" || echo 0)
      [ "${have:-0}" -ge "$n" ] && break
      sleep 0.5
    done
    pid=$(leader_pid "$system")
    t0=$(date +%s.%N); c0=$(cpu_ticks "$pid")
    wait "$bench" || echo "the $system run failed; its report says why:" >&2
    t1=$(date +%s.%N); c1=$(cpu_ticks "$pid"); rss=$(rss_mib "$pid")
    cores=$(awk -v c0="$c0" -v c1="$c1" -v t0="$t0" -v t1="$t1" -v hz="$TICKS" 'BEGIN{printf "%.2f", (c1-c0)/hz/(t1-t0)}')
    row=$(python3 - "$WORK/report.json" "$system" "$n" "$cores" "$rss" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
p = r.get("parameters", {})
lat = r["latency_ms"]
errors = ", ".join(f"{k} {v}" for k, v in r.get("errors", {}).items()) or "none"
print(f"| {sys.argv[2]} | {int(sys.argv[3]):,} | {r['throughput']:,.0f} | {lat['p50']:.2f} | {lat['p99']:.2f} | {sys.argv[4]} | {sys.argv[5]} | {p.get('sessions_lost', '?')} | {p.get('late_keepalives', '?')} | {errors} |")
EOF
)
    echo "$row" >&2
    ROWS+=("$row")
    stop_all
  done
done

{
  echo "## Sessions kept alive ($(date -u +%F), TTL $TTL, $DURATION per run, $CONNECTIONS keepalive streams)"
  echo
  echo "$(nproc) cores; $(etcd --version | sed -n 1p); latch $(git rev-parse --short HEAD). Command: \`bench/sessions.sh\`."
  echo
  echo "| system | sessions | keepalives/s | p50 ms | p99 ms | leader cores | leader RSS MiB | lost | late | errors |"
  echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"
  printf '%s\n' "${ROWS[@]}"
} | tee ${OUT:+"$OUT"}
