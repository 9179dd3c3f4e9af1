#!/usr/bin/env bash
# A reconnect storm over TLS, as a fleet makes after a network outage or a broker restart:
# CONNECT, CONNACK, DISCONNECT, close, 20 connections at a time, over TLS 1.3 with an ECDSA
# P-256 certificate, against Switchboard's TLS listener and Mosquitto's, alternating the order
# per run. Three storms each: full handshakes (`tls`: as after a broker restart, no session to
# resume), resumed sessions (`tls-resumed`: as after a network outage), and plain TCP beside
# them. Prints the medians: connections/s and broker CPU per connection.
#
#   RUNS=3 DURATION=4 benches/tls_storm.sh
#
# Loopback only; every run is bounded in time.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-3}
DURATION=${DURATION:-4}
CONCURRENCY=${CONCURRENCY:-20}
OUT=${OUT:-target/tls-storm.jsonl}
SB_PORT=${SB_PORT:-18850}
SB_TLS=${SB_TLS:-18851}
MQ_PORT=${MQ_PORT:-18852}
MQ_TLS=${MQ_TLS:-18853}

# shellcheck source=benches/lib.sh
. benches/lib.sh
cargo build --release 2>/dev/null
build_harness
make_work_dir

make_tls_files
tls_broker_confs "$SB_PORT" "$SB_TLS" "$MQ_PORT" "$MQ_TLS"

rm -f "$OUT"
BROKERS="switchboard mosquitto"
for run_no in $(seq "$RUNS"); do
  for broker in $(run_order "$run_no"); do
    start_tls_broker "$broker"
    echo "run $run_no: $broker" >&2
    for transport in tcp tls tls-resumed; do
      case $transport in
        tls) port=$tls extra=(--tls-ca "$work/ca.pem") ;;
        tls-resumed) port=$tls extra=(--tls-ca "$work/ca.pem" --tls-resume) ;;
        *) port=$plain extra=() ;;
      esac
      "$LOAD" --addr "127.0.0.1:$port" --broker-pid "$pid" --label "$broker-$transport" --quiet \
        --scenario connect-storm --concurrency "$CONCURRENCY" --duration "$DURATION" \
        "${extra[@]}" --out "$OUT" >/dev/null
    done
    kill "$pid"
    wait "$pid" 2>/dev/null || true
  done
done

python3 - "$OUT" <<'PY'
import json, statistics, sys
rows = {}
for line in open(sys.argv[1]):
    r = json.loads(line)
    rows.setdefault(r["label"], []).append(r)
print("| broker, transport | connections/s | broker CPU µs per connection | p99 connect ms | runs |")
print("|---|---|---|---|---|")
for label in sorted(rows):
    rs = rows[label]
    rate = statistics.median(r["delivered_per_s"] for r in rs)
    cpu = statistics.median(r["broker_cpu_us_per_msg"] for r in rs if r["broker_cpu_us_per_msg"])
    p99 = statistics.median(r["latency_us"]["p99"] for r in rs) / 1000
    print(f"| {label} | {rate:,.0f} | {cpu:,.1f} | {p99:.1f} | {len(rs)} |")
PY
