#!/usr/bin/env bash
# A two-node Switchboard cluster on NATS against two Mosquitto brokers bridged both ways (what
# Mosquitto offers for more than one machine), alternating, on the harness's QoS 1 pairs.
#
#   benches/cluster_compare.sh                   # ROWS="cross_w1 cross_pipe local_w1" RUNS=3 DURATION=4
#   ROWS=cross_w1 RUNS=5 benches/cluster_compare.sh
#
# Rows (8 publisher/subscriber pairs, QoS 1):
#   cross_w1   publishers on node A, subscribers on node B, one message in flight per publisher
#   cross_pipe the same with 100 in flight
#   local_w1   publishers and subscribers on node A (what the cluster costs a node's own traffic);
#              here also a single Switchboard and a single Mosquitto
# Broker CPU is both nodes' together, per delivered message; nats-server's own CPU is printed
# beside it (not in the harness's figure). Needs Debian's mosquitto and nats-server. Loopback.
set -euo pipefail
cd "$(dirname "$0")/.."
source benches/lib.sh

ROWS=${ROWS:-"cross_w1 cross_pipe local_w1"}
RUNS=${RUNS:-3}
DURATION=${DURATION:-4}
OUT=${OUT:-target/cluster-compare.jsonl}
cargo build --release --quiet --bin switchboard
build_harness
SWITCHBOARD=target/release/switchboard
make_work_dir
chmod 777 "$work"
PIDS=()
trap 'kill "${PIDS[@]}" 2>/dev/null; wait 2>/dev/null; rm -rf "$work"' EXIT

# CPU seconds (user + system) that process $1 has used.
cpu_seconds() {
  awk -v hz="$(getconf CLK_TCK)" '{print ($14 + $15) / hz}' "/proc/$1/stat"
}

# Starts the brokers of `kind`; sets A, B (ports), A_PID, B_PID, NATS_PID (0 without NATS).
start_kind() {
  A=$(free_port)
  B=$(free_port)
  NATS_PID=0
  case $1 in
    cluster)
      local nats
      nats=$(free_port)
      nats-server -a 127.0.0.1 -p "$nats" >/dev/null 2>&1 &
      NATS_PID=$!
      wait_for_port "$nats"
      for node in a b; do
        printf '[cluster]\nnats_url = "nats://127.0.0.1:%s"\nnode = "%s"\n' "$nats" "$node" >"$work/$node.toml"
      done
      local a_http b_http
      a_http=$(free_port)
      b_http=$(free_port)
      RUST_LOG=warn $SWITCHBOARD -c "$work/a.toml" --port "$A" --http-port "$a_http" >/dev/null 2>&1 &
      A_PID=$!
      RUST_LOG=warn $SWITCHBOARD -c "$work/b.toml" --port "$B" --http-port "$b_http" >/dev/null 2>&1 &
      B_PID=$!
      # A SUBACK waits only for the nodes its node knows of: the harness starts once each node
      # knows the other (its admin API lists it).
      for http in "$a_http" "$b_http"; do
        wait_for_port "$http"
        for _ in $(seq 200); do
          curl -sf "http://127.0.0.1:$http/api/v1/cluster" | grep -q '"nodes":\[{' && break
          sleep 0.05 # polling the admin API: the nodes give no other sign
        done
      done
      ;;
    mosquitto-bridge)
      mosquitto_conf "$work/b.conf" "$B" "max_queued_messages 100000"
      mosquitto_conf "$work/a.conf" "$A" "max_queued_messages 100000" "connection b" \
        "address 127.0.0.1:$B" "topic bench/# both 1" "cleansession true" "try_private true" \
        "bridge_protocol_version mqttv311" "notifications false"
      "$MOSQUITTO" -c "$work/b.conf" >/dev/null 2>&1 &
      B_PID=$!
      wait_for_port "$B"
      "$MOSQUITTO" -c "$work/a.conf" >/dev/null 2>&1 &
      A_PID=$!
      ;;
    switchboard)
      RUST_LOG=warn $SWITCHBOARD --port "$A" --http-port 0 >/dev/null 2>&1 &
      A_PID=$!
      B_PID=$A_PID
      B=$A
      ;;
    mosquitto)
      mosquitto_conf "$work/a.conf" "$A" "max_queued_messages 100000"
      "$MOSQUITTO" -c "$work/a.conf" >/dev/null 2>&1 &
      A_PID=$!
      B_PID=$A_PID
      B=$A
      ;;
  esac
  PIDS+=("$A_PID" "$B_PID" "$NATS_PID")
  wait_for_port "$A"
  wait_for_port "$B"
}

stop_kind() {
  kill "$A_PID" "$B_PID" 2>/dev/null || true
  [ "$NATS_PID" = 0 ] || kill "$NATS_PID" 2>/dev/null || true
  wait 2>/dev/null || true
}

row_args() {
  case $1 in
    cross_w1 | local_w1) echo "--scenario pairs --qos 1 --window 1 --window-acked --clients 8" ;;
    cross_pipe) echo "--scenario pairs --qos 1 --window 100 --clients 8" ;;
    *) echo "unknown row $1" >&2; exit 1 ;;
  esac
}

row_kinds() {
  case $1 in
    local_*) echo "cluster switchboard mosquitto" ;;
    *) echo "cluster mosquitto-bridge" ;;
  esac
}

for run in $(seq 1 "$RUNS"); do
  for row in $ROWS; do
    BROKERS=$(row_kinds "$row")
    for kind in $(run_order "$run"); do
      start_kind "$kind"
      subscribe=$B
      peer=(--peer-pid "$B_PID")
      case $row in local_*) subscribe=$A ;; esac
      if [ "$B_PID" = "$A_PID" ]; then peer=(); fi
      nats_before=0
      [ "$NATS_PID" = 0 ] || nats_before=$(cpu_seconds "$NATS_PID")
      # shellcheck disable=SC2046
      "$LOAD" $(row_args "$row") --addr "127.0.0.1:$A" --subscribe-addr "127.0.0.1:$subscribe" \
        --broker-pid "$A_PID" "${peer[@]}" --label "$kind-$row" \
        --duration "$DURATION" --quiet --json --out "$OUT" >"$work/report.json"
      nats_after=0
      [ "$NATS_PID" = 0 ] || nats_after=$(cpu_seconds "$NATS_PID")
      python3 - "$work/report.json" "$run" "$nats_before" "$nats_after" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
delivered = r["delivered_per_s"]
seconds = r.get("seconds") or 0
nats = float(sys.argv[4]) - float(sys.argv[3])
nats_us = nats * 1e6 / (delivered * seconds) if delivered and seconds and nats else 0
print(r["label"], "run", sys.argv[2], round(delivered), "msgs/s",
      round(r.get("broker_cpu_us_per_msg") or 0, 2), "us broker CPU/msg (both nodes);",
      "nats-server", round(nats_us, 2), "us/msg (over the whole run); lost", r.get("lost"))
EOF
      stop_kind
    done
  done
done
