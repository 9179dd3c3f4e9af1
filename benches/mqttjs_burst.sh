#!/usr/bin/env bash
# A burst from a real client to a slow subscriber, Switchboard beside Mosquitto (both on their
# defaults, Mosquitto with TCP_NODELAY as in compare.sh): MQTT.js publishes COUNT QoS 1 messages,
# 100 in flight, to an MQTT.js subscriber on `js/#` at QoS 2 (tests/interop/mqttjs/burst.js).
# Each run starts a fresh broker; the brokers alternate; the table shows the median of RUNS runs:
# messages delivered, whether the subscriber lost its connection, time to the last message, and
# the broker's CPU time per delivered message. Loopback only; each run is bounded to 70 s.
#
#   benches/mqttjs_burst.sh                  # 3 runs of 3,000 and 15,000, MQTT 3.1.1 and 5
#   RUNS=5 COUNTS="3000" VERSIONS="5" benches/mqttjs_burst.sh
#
# Needs node, `npm ci --prefix tests/interop/mqttjs`, and Debian's mosquitto.
set -euo pipefail
cd "$(dirname "$0")/.."

RUNS=${RUNS:-3}
COUNTS=${COUNTS:-3000 15000}
VERSIONS=${VERSIONS:-4 5}
PORT=${PORT:-18840}
MOSQUITTO=$(command -v mosquitto || echo /usr/sbin/mosquitto)

cargo build --release --bin switchboard 2>/dev/null
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
printf 'listener %s 127.0.0.1\nallow_anonymous true\nset_tcp_nodelay true\n' "$PORT" > "$work/mosquitto.conf"

# CPU time of every thread of a process, in ns (scheduler statistics: finer than clock ticks).
cpu_ns() { cat /proc/"$1"/task/*/schedstat | awk '{s += $1} END {print s}'; }

# run BROKER VERSION COUNT -> "delivered closed elapsed_ms cpu_us_per_msg"
run() {
  local broker=$1 version=$2 count=$3 pid
  if [ "$broker" = switchboard ]; then
    target/release/switchboard -p "$PORT" --http-port 0 2>"$work/broker.log" & pid=$!
  else
    "$MOSQUITTO" -c "$work/mosquitto.conf" 2>"$work/broker.log" & pid=$!
  fi
  for _ in $(seq 50); do
    (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break
    sleep 0.1 # waiting for the broker's port to open
  done
  local before after line
  before=$(cpu_ns "$pid")
  line=$(timeout 70 node tests/interop/mqttjs/burst.js "$PORT" "$version" "$count" 100 || true)
  after=$(cpu_ns "$pid")
  kill "$pid"; wait "$pid" 2>/dev/null || true
  python3 - "$line" "$before" "$after" <<'PY'
import json, sys
r = json.loads(sys.argv[1] or '{"received": 0}')
cpu_us = (int(sys.argv[3]) - int(sys.argv[2])) / 1000
got = r.get("received", 0)
print(got, int(bool(r.get("subscriber_closed"))), r.get("elapsed_ms") or -1,
      round(cpu_us / got, 1) if got else -1)
PY
}

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

printf '| MQTT | burst | broker | delivered (median) | subscriber disconnected (runs) | ms to last message | broker CPU µs/msg |\n'
printf '|---|---|---|---|---|---|---|\n'
for version in $VERSIONS; do
  for count in $COUNTS; do
    : > "$work/switchboard.txt"; : > "$work/mosquitto.txt"
    for i in $(seq "$RUNS"); do
      if [ $((i % 2)) -eq 1 ]; then order="switchboard mosquitto"; else order="mosquitto switchboard"; fi
      for broker in $order; do run "$broker" "$version" "$count" >> "$work/$broker.txt"; done
    done
    for broker in switchboard mosquitto; do
      f="$work/$broker.txt"
      label=$([ "$version" = 5 ] && echo 5.0 || echo 3.1.1)
      printf '| %s | %s | %s | %s | %s of %s | %s | %s |\n' "$label" "$count" "$broker" \
        "$(cut -d' ' -f1 "$f" | median)" "$(cut -d' ' -f2 "$f" | awk '{s+=$1} END {print s}')" "$RUNS" \
        "$(cut -d' ' -f3 "$f" | median)" "$(cut -d' ' -f4 "$f" | median)"
    done
  done
done
