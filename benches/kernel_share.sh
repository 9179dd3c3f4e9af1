#!/usr/bin/env bash
# How much of each broker's CPU per message is the kernel's: ab.sh's rows, alternating the
# brokers run by run, with `perf record` sampling the broker (not the harness) over the middle
# of each row. Prints, per broker and row, the medians of the runs' CPU per delivered message
# and of its kernel and user-space parts (user space: the broker's own code and its libraries).
#
#   BROKERS="head mosquitto" ROWS="w1_8 w1_200 open" RUNS=3 benches/kernel_share.sh
#
# The kernel's part is the floor no change to the broker's code can go below: the TCP work
# of each packet, the system calls, the wake-ups. Builds come from $BIN_DIR (target/ab), as in
# ab.sh. Needs `perf`. Loopback only; every run is bounded in time.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN_DIR=${BIN_DIR:-target/ab}
OUT=${OUT:-target/kernel_share.jsonl}
RUNS=${RUNS:-3}
DURATION=${DURATION:-6}
ROWS=${ROWS:-"w1_8 w1_200 open"}
LOAD_ARGS=${LOAD_ARGS:-}
BROKERS=${BROKERS:-"new mosquitto"}
SB_PORT=${SB_PORT:-18840}
MQ_PORT=${MQ_PORT:-18841}
command -v perf >/dev/null || { echo "$0 needs perf" >&2; exit 1; }
[ "$DURATION" -ge 4 ] || { echo "DURATION must be at least 4 (seconds)" >&2; exit 2; }

# shellcheck source=benches/lib.sh
. benches/lib.sh
build_harness
make_work_dir
mosquitto_conf "$work/mosquitto.conf" "$MQ_PORT"
rm -f "$OUT"
for run_no in $(seq "$RUNS"); do
  for broker in $(run_order "$run_no"); do
    if [ "$broker" = mosquitto ]; then port=$MQ_PORT; else port=$SB_PORT; fi
    start_broker "$broker" "$port"
    echo "run $run_no: $broker" >&2
    for row in $ROWS; do
      set_row_args "$row"
      # shellcheck disable=SC2086
      "$LOAD" --addr "127.0.0.1:$port" --broker-pid "$pid" --label "$broker" --quiet \
        --out "$work/row.jsonl" $args $LOAD_ARGS --duration "$DURATION" >/dev/null &
      load_pid=$!
      sleep 1 # past the harness's connects: the samples are of the traffic alone
      perf record -q -F 997 -p "$pid" -o "$work/perf.data" -- sleep $((DURATION - 2)) \
        >/dev/null 2>&1
      wait "$load_pid"
      kernel=$(perf report -i "$work/perf.data" --no-children -g none --sort dso 2>/dev/null \
        | awk '/%/ && !/^#/ { gsub("%", "", $1); all += $1; if ($2 == "[kernel.kallsyms]") k += $1 }
               END { if (all > 0) printf "%.4f", k / all; else print "null" }')
      tail -1 "$work/row.jsonl" | jq -c --arg row "$row" --argjson run "$run_no" \
        --argjson kernel "$kernel" '. + {row: $row, run: $run, kernel_share: $kernel}' >> "$OUT"
    done
    kill "$pid"; wait "$pid" 2>/dev/null || true
  done
done
python3 - "$OUT" <<'PY'
import json, statistics, sys
rows = {}
for line in open(sys.argv[1]):
    r = json.loads(line)
    if r.get("kernel_share") is None:
        continue
    cpu = r["broker_cpu_us_per_msg"]
    rows.setdefault((r["row"], r["label"]), []).append(
        (r["delivered_per_s"], cpu, cpu * r["kernel_share"], cpu * (1 - r["kernel_share"])))
print(f"{'row':8} {'broker':12} {'runs':>4} {'msgs/s':>10} {'CPU us/msg':>10} {'kernel':>7} {'user':>6}")
for (row, label), runs in sorted(rows.items()):
    med = [statistics.median(x[i] for x in runs) for i in range(4)]
    print(f"{row:8} {label:12} {len(runs):>4} {med[0]:>10,.0f} {med[1]:>10.2f} {med[2]:>7.2f} {med[3]:>6.2f}")
PY
