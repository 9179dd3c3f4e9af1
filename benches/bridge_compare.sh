#!/usr/bin/env bash
# Bridge throughput and CPU: publishers on a site broker, subscribers on the central broker the
# site bridges `bench/#` out to (QoS 1), Switchboard pair against Mosquitto pair, alternating.
# Broker CPU is the two brokers' together, per delivered message.
#
#   benches/bridge_compare.sh                      # ROWS="w1_8 pipe1" RUNS=3 DURATION=4
#   ROWS=w1_8 RUNS=5 OUT=target/b.jsonl benches/bridge_compare.sh
#   KINDS="old switchboard" OLD_SWITCHBOARD=target/ab/x benches/bridge_compare.sh   # two builds
#
# Rows: w1_8 = 8 publisher/subscriber pairs, one QoS 1 message in flight per publisher;
# pipe1 = the same with 100 in flight. Needs `mosquitto` (Debian's). Loopback only.
set -euo pipefail
cd "$(dirname "$0")/.."
source benches/lib.sh

ROWS=${ROWS:-"w1_8 pipe1"}
RUNS=${RUNS:-3}
DURATION=${DURATION:-4}
OUT=${OUT:-target/bridge-compare.jsonl}

cargo build --release --quiet --bin switchboard --bench load
# SWITCHBOARD=path/to/another/build to compare builds; KINDS="a b" names what alternates.
SWITCHBOARD=${SWITCHBOARD:-target/release/switchboard}
KINDS=${KINDS:-"switchboard mosquitto"}
LOAD=$(ls -t target/release/deps/load-* | grep -v '\.d$' | head -1)
WORK=$(mktemp -d)
chmod 777 "$WORK"
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

wait_port() {
  for _ in $(seq 1 500); do
    if python3 -c "import socket,sys; socket.create_connection(('127.0.0.1',$1),0.2)" 2>/dev/null; then
      return 0
    fi
    sleep 0.02
  done
  echo "nothing listens on $1" >&2
  exit 1
}

# Starts a site/central pair of `kind`; sets SITE, CENTRAL, SITE_PID, CENTRAL_PID.
start_pair() {
  local kind=$1
  CENTRAL=$(free_port)
  SITE=$(free_port)
  if [ "$kind" != mosquitto ]; then
    local binary=$SWITCHBOARD
    if [ "$kind" = old ]; then binary=${OLD_SWITCHBOARD:?OLD_SWITCHBOARD=path}; fi
    RUST_LOG=warn $binary --port "$CENTRAL" --http-port 0 >/dev/null 2>&1 &
    CENTRAL_PID=$!
    cat >"$WORK/site.toml" <<EOF
[[bridge]]
name = "central"
address = "127.0.0.1:$CENTRAL"
topics = [{ pattern = "bench/#", direction = "out", qos = 1 }]
EOF
    wait_port "$CENTRAL"
    RUST_LOG=warn $binary -c "$WORK/site.toml" --port "$SITE" --http-port 0 >/dev/null 2>&1 &
    SITE_PID=$!
  else
    printf 'listener %s 127.0.0.1\nallow_anonymous true\nset_tcp_nodelay true\nmax_queued_messages 100000\nlog_dest none\n' \
      "$CENTRAL" >"$WORK/central.conf"
    "$MOSQUITTO" -c "$WORK/central.conf" >/dev/null 2>&1 &
    CENTRAL_PID=$!
    printf 'listener %s 127.0.0.1\nallow_anonymous true\nset_tcp_nodelay true\nmax_queued_messages 100000\nlog_dest none\nconnection central\naddress 127.0.0.1:%s\ntopic bench/# out 1\ncleansession true\ntry_private true\nbridge_protocol_version mqttv311\nnotifications false\n' \
      "$SITE" "$CENTRAL" >"$WORK/site.conf"
    wait_port "$CENTRAL"
    "$MOSQUITTO" -c "$WORK/site.conf" >/dev/null 2>&1 &
    SITE_PID=$!
  fi
  PIDS+=("$CENTRAL_PID" "$SITE_PID")
  wait_port "$SITE"
}

stop_pair() {
  kill "$SITE_PID" "$CENTRAL_PID" 2>/dev/null || true
  wait "$SITE_PID" "$CENTRAL_PID" 2>/dev/null || true
}

row_args() {
  case $1 in
    w1_8) echo "--scenario pairs --qos 1 --window 1 --clients 8" ;;
    pipe1) echo "--scenario pairs --qos 1 --window 100 --clients 8" ;;
    *) echo "unknown row $1" >&2; exit 1 ;;
  esac
}

for run in $(seq 1 "$RUNS"); do
  for row in $ROWS; do
    for kind in $KINDS; do
      start_pair "$kind"
      # The bridge subscribes after it connects: give it the warm-up the harness already has.
      # shellcheck disable=SC2046
      "$LOAD" $(row_args "$row") --addr "127.0.0.1:$SITE" --subscribe-addr "127.0.0.1:$CENTRAL" \
        --broker-pid "$SITE_PID" --peer-pid "$CENTRAL_PID" --label "$kind-bridge-$row" \
        --duration "$DURATION" --quiet --json --out "$OUT" |
        python3 -c 'import json,sys; r=json.load(sys.stdin); print(r["label"], "run", '"$run"', round(r["delivered_per_s"]), "msgs/s", round(r.get("broker_cpu_us_per_msg") or 0, 2), "us CPU/msg (both brokers), lost", r.get("lost"))'
      stop_pair
    done
  done
done
