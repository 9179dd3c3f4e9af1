#!/usr/bin/env bash
# The rate at saturation of the open-loop rows: each broker is offered rising rates until it
# falls behind, and its ceiling is the most it delivered. Two traffics, as in compare.sh:
#   open   QoS 1 over 1,000 publisher/subscriber pairs, RATES_OPEN messages/s in all;
#   fleet  1,000 devices answering an app's status requests, RATES_FLEET requests/s (each
#          request is two messages delivered: to the device, and its answer to the app).
# A step is overloaded when it delivers less than 90% of what was offered (fleet: of twice the
# requests); the ramp of that broker and traffic stops after its first overloaded step. Runs
# alternate the order of the brokers. Installs Debian's mosquitto if missing (needs root).
# Loopback only; every step is bounded in time.
#
#   benches/saturation.sh                          # Switchboard (release build) and Mosquitto
#   BROKERS="new mosquitto" BIN_DIR=target/ab RUNS=5 benches/saturation.sh
#   benches/saturation.sh --summary docs/benchmarks-results-2026-12-01-afternoon-saturation.jsonl
#
# Reports: $OUT (one line per step, the harness's JSON); the table: medians over the runs of
# each broker's ceiling, its ratio to Mosquitto's, and the step's p50 and p99 (`--summary FILE`
# prints it for the reports of an earlier run, and runs nothing).
set -euo pipefail
cd "$(dirname "$0")/.."

# Prints the table of the ceilings in the reports of file $1.
summary() {
  python3 - "$1" <<'PY'
import json, statistics, sys
from collections import defaultdict
best = {}
for line in open(sys.argv[1]):
    r = json.loads(line)
    broker, traffic, run = r["label"].split(" ")
    key = (traffic, broker, run)
    if key not in best or r["delivered_per_s"] > best[key]["delivered_per_s"]:
        best[key] = r
by = defaultdict(list)
for (traffic, broker, run), r in best.items():
    by[(traffic, broker)].append(r)
print("| traffic | broker | ceiling msgs/s (median) | runs | vs Mosquitto | offered there | p50 us | p99 us | broker CPU us/msg |")
print("|---|---|---|---|---|---|---|---|---|")
for traffic in ("open", "fleet"):
    mq = [r["delivered_per_s"] for r in by.get((traffic, "mosquitto"), [])]
    for (t, broker), rs in sorted(by.items()):
        if t != traffic:
            continue
        rs.sort(key=lambda r: r["delivered_per_s"])
        mid = rs[len(rs) // 2]
        med = statistics.median(r["delivered_per_s"] for r in rs)
        ratio = "%.2fx" % (med / statistics.median(mq)) if mq else "-"
        runs = ", ".join("%.0f" % r["delivered_per_s"] for r in rs)
        print("| %s | %s | %.0f | %s | %s | %s | %d | %d | %.2f |" % (
            traffic, broker, med, runs, ratio, mid["load"], mid["latency_us"]["p50"],
            mid["latency_us"]["p99"], mid["broker_cpu_us_per_msg"]))
PY
}

if [ "${1:-}" = --summary ]; then
  summary "$2"
  exit 0
fi
RUNS=${RUNS:-3}
DURATION=${DURATION:-4}
OUT=${OUT:-target/saturation.jsonl}
BROKERS=${BROKERS:-"switchboard mosquitto"}
MQTT=${MQTT:-3.1.1}
RATES_OPEN=${RATES_OPEN:-"20000 30000 40000 50000 60000 80000 100000 120000 140000 160000 200000 240000 280000 320000 360000 400000"}
RATES_FLEET=${RATES_FLEET:-"10000 15000 20000 25000 30000 40000 50000 60000 70000 80000"}
SB_PORT=${SB_PORT:-18850}
MQ_PORT=${MQ_PORT:-18851}
if ! command -v mosquitto >/dev/null 2>&1 && [ ! -x /usr/sbin/mosquitto ]; then
  echo "installing mosquitto" >&2
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto >/dev/null
fi
if [ -z "${BIN_DIR:-}" ]; then
  cargo build --release --bin switchboard 2>/dev/null
  BIN_DIR=target/release
fi

# shellcheck source=benches/lib.sh
. benches/lib.sh
build_harness
make_work_dir
trap '[ -n "${pid:-}" ] && kill "$pid" 2>/dev/null; rm -rf "$work"' EXIT
mosquitto_conf "$work/mosquitto.conf" "$MQ_PORT" "max_queued_messages 100000"
rm -f "$OUT"

# One step: the harness against the broker on port $2 (pid $pid), labelled $3, with the rest of
# the arguments; its report goes to file $1 alone.
offer() {
  local step=$1 port=$2 label=$3
  shift 3
  rm -f "$step"
  "$LOAD" --addr "127.0.0.1:$port" --broker-pid "$pid" --label "$label" --quiet --out "$step" \
    --mqtt "$MQTT" --duration "$DURATION" "$@" >/dev/null
}

# Offers broker $1 (pid $pid, port $2) traffic $3 at rising rates until a step is overloaded.
ramp() {
  local broker=$1 port=$2 traffic=$3 rates args per_rate step="$work/step.jsonl"
  case $traffic in
    open) rates=$RATES_OPEN; args="--scenario pairs --qos 1 --clients 1000"; per_rate=1 ;;
    fleet) rates=$RATES_FLEET; args="--scenario fleet --qos 1 --clients 1000"; per_rate=2 ;;
  esac
  for rate in $rates; do
    # A step whose clients could not all connect is tried once more, and said so (once,
    # Mosquitto reset one of 2,000 connections made at once).
    # shellcheck disable=SC2086
    if ! offer "$step" "$port" "$broker $traffic $run_no" $args --rate "$rate"; then
      echo "run $run_no: $broker $traffic at $rate failed; once more" >&2
      # shellcheck disable=SC2086
      offer "$step" "$port" "$broker $traffic $run_no" $args --rate "$rate"
    fi
    cat "$step" >> "$OUT"
    local delivered
    delivered=$(sed -n 's/.*"delivered_per_s":\([0-9.]*\).*/\1/p' "$step")
    echo "run $run_no: $broker $traffic offered $((rate * per_rate)) delivered ${delivered%.*}" >&2
    if awk -v d="$delivered" -v o="$((rate * per_rate))" 'BEGIN { exit !(d < 0.9 * o) }'; then
      return
    fi
  done
}

for run_no in $(seq "$RUNS"); do
  for broker in $(run_order "$run_no"); do
    if [ "$broker" = mosquitto ]; then port=$MQ_PORT; else port=$SB_PORT; fi
    for traffic in open fleet; do
      # A fresh broker per ramp: nothing left queued from the overloaded step of the last one.
      start_broker "$broker" "$port"
      ramp "$broker" "$port" "$traffic"
      kill "$pid"; wait "$pid" 2>/dev/null || true
      pid=
    done
  done
done

summary "$OUT"
