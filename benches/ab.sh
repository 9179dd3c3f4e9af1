#!/usr/bin/env bash
# Builds of Switchboard side by side (and Mosquitto): the realistic rows of compare.sh against
# each, alternating the order per run, then one table of medians. For measuring a change.
#
#   mkdir -p target/ab && cp target/release/switchboard target/ab/new   # one binary per variant
#   git stash && cargo build --release && cp target/release/switchboard target/ab/old && git stash pop
#   BROKERS="old new mosquitto" RUNS=3 benches/ab.sh
#
# It prints the medians, then each build's CPU per message over Mosquitto's run by run (the
# median of those ratios and their range: single runs spread by 15-20% on a 2-core machine).
# A variant can be a script that execs a binary with arguments (e.g. `-c one-worker.toml`).
# MOSQUITTO_LINE is one more line for Mosquitto's configuration (e.g. `acl_file /path`).
# LOAD_ARGS is added to every row (e.g. `--persistent-subscribers`, `--window-acked` for
# publishers that also wait for their PUBACK, as devices do, or `--churn-beside 2000` for one
# more client making 2,000 subscription changes a second beside the traffic).
# ROWS picks rows: w1_8 w1_200 q0_200 open fleet fleet20 pipe0 pipe1 fanout fanout1 fanin0 fanin
# fleet10k (10,000 devices, one status request a second each: 10,000 requests/s, as `fleet`
# with ten times the connections; each process needs 10,010 descriptors)
# w1a_8 (window 1, 8 pairs, each publisher also waiting for its PUBACK: `--window-acked`;
# w1a_200 and w1a_2000 the same with 200 and 2,000 pairs)
# idle (10,000 idle connections: RSS per connection) idle_max (IDLE_MAX of them, default 19,000:
# near a 20,000 descriptor limit) storm (connect storm, 20 at a time)
# r10k (100 pairs at 10k msgs/s in all) r10k_idle (the same with 10,000 idle connections beside)
# retained (20 subscribers, each getting 1,000 retained messages, as in compare.sh)
# wild (8 pipelined pairs, QoS 0, each subscriber through a wildcard over 100 topics, as in
# compare.sh).
# KERNEL_SHARE=1 also samples each broker (not the harness) with `perf record` over the middle
# of each row (DURATION at least 4) and prints, per broker and row, the medians of its CPU per
# delivered message split into the kernel's part (the TCP work of each packet, the system
# calls, the wake-ups: the floor no change to a broker's code goes below) and user space.
# PIN=split places every thread of each broker on CPU 1 and the harness on CPU 0; PIN=same puts
# the harness on CPU 1 beside the broker (`taskset`). Where the scheduler puts the threads moves
# both brokers' CPU per message by about a quarter on a 2-core machine ("The open loop paced
# message by message", "Pinned", in docs/benchmarks.md); pinning holds that still.
# Loopback only; every run is bounded in time.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN_DIR=${BIN_DIR:-target/ab}
OUT=${OUT:-target/ab.jsonl}
RUNS=${RUNS:-3}
DURATION=${DURATION:-4}
ROWS=${ROWS:-"w1_8 w1_200 open fleet"}
LOAD_ARGS=${LOAD_ARGS:-}
BROKERS=${BROKERS:-"new mosquitto"}
KERNEL_SHARE=${KERNEL_SHARE:-0}
PIN=${PIN:-}
SB_PORT=${SB_PORT:-18840}
MQ_PORT=${MQ_PORT:-18841}

# shellcheck source=benches/lib.sh
. benches/lib.sh
case "$PIN" in
  "") harness_cpu=() ;;
  split) harness_cpu=(taskset -c 0) ;;
  same) harness_cpu=(taskset -c 1) ;;
  *) echo "PIN is split or same" >&2; exit 2 ;;
esac
if [ -n "$PIN" ]; then
  command -v taskset >/dev/null || { echo "PIN needs taskset" >&2; exit 1; }
  [ "$(nproc)" -ge 2 ] || { echo "PIN needs 2 CPUs" >&2; exit 1; }
fi
if [ "$KERNEL_SHARE" = 1 ]; then
  command -v perf >/dev/null || { echo "KERNEL_SHARE=1 needs perf" >&2; exit 1; }
  [ "$DURATION" -ge 4 ] || { echo "KERNEL_SHARE=1 needs DURATION of 4 or more" >&2; exit 2; }
fi

# Runs row $row against $broker (pid $pid, port $port), its report appended to $OUT; with
# KERNEL_SHARE=1, with the share of the broker's samples spent in the kernel added to it.
run_row() {
  if [ "$KERNEL_SHARE" != 1 ]; then
    # shellcheck disable=SC2086
    "${harness_cpu[@]}" "$LOAD" --addr "127.0.0.1:$port" --broker-pid "$pid" --label "$broker" \
      --quiet --out "$OUT" $args $LOAD_ARGS --duration "$DURATION" >/dev/null
    return
  fi
  # shellcheck disable=SC2086
  "${harness_cpu[@]}" "$LOAD" --addr "127.0.0.1:$port" --broker-pid "$pid" --label "$broker" \
    --quiet --out "$work/row.jsonl" $args $LOAD_ARGS --duration "$DURATION" >/dev/null &
  local load_pid=$! kernel
  sleep 1 # past the harness's connects: the samples are of the traffic alone
  perf record -q -F 997 -p "$pid" -o "$work/perf.data" -- sleep $((DURATION - 2)) >/dev/null 2>&1
  wait "$load_pid"
  kernel=$(perf report -i "$work/perf.data" --no-children -g none --sort dso 2>/dev/null \
    | awk '/%/ && !/^#/ { gsub("%", "", $1); all += $1; if ($2 == "[kernel.kallsyms]") k += $1 }
           END { if (all > 0) printf "%.4f", k / all; else print "null" }')
  tail -1 "$work/row.jsonl" | jq -c --arg row "$row" --argjson run "$run_no" \
    --argjson kernel "$kernel" '. + {row: $row, run: $run, kernel_share: $kernel}' >> "$OUT"
}

build_harness
make_work_dir
if [ -n "${MOSQUITTO_LINE:-}" ]; then
  mosquitto_conf "$work/mosquitto.conf" "$MQ_PORT" "$MOSQUITTO_LINE"
else
  mosquitto_conf "$work/mosquitto.conf" "$MQ_PORT"
fi
rm -f "$OUT"
for run_no in $(seq "$RUNS"); do
  for broker in $(run_order "$run_no"); do
    if [ "$broker" = mosquitto ]; then port=$MQ_PORT; else port=$SB_PORT; fi
    start_broker "$broker" "$port"
    [ -z "$PIN" ] || taskset -a -p -c 1 "$pid" >/dev/null
    echo "run $run_no: $broker" >&2
    for row in $ROWS; do
      set_row_args "$row"
      run_row
    done
    kill "$pid"; wait "$pid" 2>/dev/null || true
  done
done
"$LOAD" --table "$OUT"
[ "$KERNEL_SHARE" = 1 ] || exit 0
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
print()
print("| row | broker | runs | msgs/s | CPU µs/msg | kernel | user space |")
print("|---|---|---|---|---|---|---|")
for (row, label), runs in sorted(rows.items()):
    rate, cpu, kernel, user = (statistics.median(x[i] for x in runs) for i in range(4))
    print(f"| {row} | {label} | {len(runs)} | {rate:,.0f} | {cpu:.2f} | {kernel:.2f} | {user:.2f} |")
PY
