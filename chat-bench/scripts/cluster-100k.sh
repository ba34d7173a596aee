#!/usr/bin/env bash
# The 100,000-connection run of docs/benchmarks.md ("100,000 connections on
# a cluster"): NODES chat-server processes (`chat-bench cluster up`, release
# build) on PostgreSQL, a private nats-server and a private redis-server
# (so that no other load on the shared ones mixes in), and etcd; CONNS
# authenticated, heartbeating connections opened through `route` from
# PROCS load processes and SOURCES source addresses (127.0.0.2...); while
# they are held, a one-to-one run of PAIRS pairs through `route`.
# HEARTBEAT (seconds, default the product's 5) sets the servers' heartbeat;
# SOURCES the number of source addresses (127.0.0.2...).
#
#   cargo build --release -p chat-server -p chat-bench \
#     --features chat-server/full,chat-server/etcd
#   .ci/engines start
#   chat-bench/scripts/cluster-100k.sh            # OUT=/tmp/chat-100k
#
# Everything it starts is stopped on exit. Reports: $OUT/connections.json,
# $OUT/one-to-one.json, and the logs beside them.
set -euo pipefail
cd "$(dirname "$0")/../.."

BIN=${BIN:-${CARGO_TARGET_DIR:-target}/release}
NODES=${NODES:-7}
CONNS=${CONNS:-100000}
PROCS=${PROCS:-7}
PER_USER=${PER_USER:-50}
HOLD=${HOLD:-150}
QUIET=${QUIET:-30}
PAIRS=${PAIRS:-200}
DURATION=${DURATION:-20}
OUT=${OUT:-/tmp/chat-100k}
NATS_PORT=${NATS_PORT:-14222}
REDIS_PORT=${REDIS_PORT:-16379}
HEARTBEAT=${HEARTBEAT:-5}
# Source addresses: a socket bound to an address before connecting takes a
# port of that address whatever the destination, and the kernel's search
# for a free one slows to a crawl past about half of the 28,232 ephemeral
# ports: keep under ~5,000 connections per address.
SOURCES=${SOURCES:-24}

rm -rf "$OUT"
mkdir -p "$OUT/nats"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT

nats-server -a 127.0.0.1 -p "$NATS_PORT" -js -sd "$OUT/nats" >"$OUT/nats.log" 2>&1 &
NATS_PID=$!
pids+=("$NATS_PID")
redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --save '' --appendonly no \
  >"$OUT/redis.log" 2>&1 &
REDIS_PID=$!
pids+=("$REDIS_PID")
sleep 1

CHAT_TEST_NATS_URL="nats://127.0.0.1:$NATS_PORT" \
CHAT_TEST_REDIS_URL="redis://127.0.0.1:$REDIS_PORT" \
  "$BIN/chat-bench" cluster up -n "$NODES" --server-bin "$BIN/chat-server" \
  --heartbeat-secs "$HEARTBEAT" --presence-timeout-secs $((HEARTBEAT * 6)) \
  >"$OUT/cluster.log" 2>&1 &
CLUSTER_PID=$!
pids+=("$CLUSTER_PID")
for _ in $(seq 1 120); do
  grep -q '^clients:' "$OUT/cluster.log" && break
  kill -0 "$CLUSTER_PID" 2>/dev/null || { cat "$OUT/cluster.log"; exit 1; }
  sleep 1
done
URL=$(sed -n 's/^clients: \([^ ]*\).*/\1/p' "$OUT/cluster.log")
[ -n "$URL" ] || { cat "$OUT/cluster.log"; exit 1; }
cat "$OUT/cluster.log"

# Resident memory (KiB) and CPU time (ticks of 1/100 s) of every watched
# process, one line each: `LABEL NAME PID RSS_KIB CPU_TICKS`.
sample() {
  local label=$1 name pid
  for spec in "${procs[@]}"; do
    name=${spec%=*} pid=${spec##*=}
    echo "$label $name $pid $(awk '/^VmRSS/ {print $2}' "/proc/$pid/status") \
$(awk '{print $14 + $15}' "/proc/$pid/stat")" >>"$OUT/samples.txt"
  done
}

# Each node watched under its host:port (its connections are counted under
# that name), and the broker and the presence store.
procs=()
while read -r _ _ _ _ pid _ url; do
  procs+=("${url#http://}=$pid")
done < <(grep '^node ' "$OUT/cluster.log")
procs+=("nats=$NATS_PID" "redis=$REDIS_PID" "lb=$CLUSTER_PID")
watch=()
for spec in "${procs[@]}"; do watch+=(--watch "$spec"); done
sample idle
sources=$(seq -s, -f '127.0.0.%g' 2 $((SOURCES + 1)))

echo "== $CONNS connections through route, $PROCS load processes, $SOURCES source addresses"
"$BIN/chat-bench" --json "$OUT/connections.json" connections --server "$URL" --via-route \
  -n "$CONNS" --processes "$PROCS" --conns-per-user "$PER_USER" --source-ips "$sources" \
  --connect-concurrency 128 --connect-timeout 30 --hold "$HOLD" "${watch[@]}" \
  >"$OUT/connections.out" 2>"$OUT/connections.err" &
CONN_PID=$!
pids+=("$CONN_PID")
for _ in $(seq 1 1800); do
  grep -q 'holding' "$OUT/connections.err" && break
  kill -0 "$CONN_PID" 2>/dev/null || break
  sleep 1
done
uptime >>"$OUT/samples.txt"
# Heartbeats only: QUIET seconds with every connection held and nothing else.
sample held
sleep "$QUIET"
sample quiet_end
echo "== holding; one-to-one with $PAIRS pairs through route for $DURATION s"
"$BIN/chat-bench" --json "$OUT/one-to-one.json" one-to-one --server "$URL" --via-route \
  --pairs "$PAIRS" --duration "$DURATION" --source-ips "127.0.0.$((SOURCES + 2))" \
  >"$OUT/one-to-one.out" 2>"$OUT/one-to-one.err" || true
sample one_to_one_end
uptime >>"$OUT/samples.txt"
cat "$OUT/one-to-one.out"
grep 'connections per server' "$OUT/one-to-one.err" || true
wait "$CONN_PID" || true
cat "$OUT/connections.out"
echo "== samples (label name pid rss_kib cpu_ticks), QUIET=$QUIET s"
cat "$OUT/samples.txt"
