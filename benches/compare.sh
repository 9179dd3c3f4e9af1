#!/usr/bin/env bash
# Switchboard side by side with Mosquitto: the same scenarios against both, alternating which
# goes first, then one table (medians) and a chart. Loopback only; every run is bounded in time.
#
#   benches/compare.sh                 # 3 runs of each, 5 s measured each (~25 minutes)
#   RUNS=5 DURATION=10 benches/compare.sh
#   MQTT=5 RESULTS=target/compare-v5.jsonl CHART=target/v5.svg benches/compare.sh  # MQTT 5 clients
#   PEERS=rumqttd,nats benches/compare.sh   # also rumqttd 0.20 and nats-server's MQTT listener
#
# Installs Debian's mosquitto if missing (needs root); with PEERS, also rumqttd 0.20 (cargo
# install, into target/peers) and Debian's nats-server (JetStream on, MQTT 3.1.1 only, QoS 0 and
# 1). Peers run the realistic and pipelined rows, not the storms. Results: target/compare.jsonl
# (and -realistic, -other, -saturation beside it); tables on stdout; chart: docs/benchmarks.svg.
# The rate at saturation (benches/saturation.sh, Switchboard and Mosquitto) runs last; SATURATION=0
# leaves it out.
set -euo pipefail
cd "$(dirname "$0")/.."

RUNS=${RUNS:-3}
DURATION=${DURATION:-5}
CLIENTS=${CLIENTS:-8}
RESULTS=${RESULTS:-target/compare.jsonl}
SB_PORT=${SB_PORT:-18830}
MQ_PORT=${MQ_PORT:-18831}
MQTT=${MQTT:-3.1.1}
CHART=${CHART:-docs/benchmarks.svg}
PEERS=${PEERS:-}
RQ_PORT=${RQ_PORT:-18832}
NATS_PORT=${NATS_PORT:-18833}
if [ -n "$PEERS" ] && [ "$MQTT" != 3.1.1 ]; then
  echo "PEERS are compared on MQTT 3.1.1 only" >&2
  exit 2
fi

if ! command -v mosquitto >/dev/null 2>&1 && [ ! -x /usr/sbin/mosquitto ]; then
  echo "installing mosquitto" >&2
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto >/dev/null
fi
MOSQUITTO=$(command -v mosquitto || echo /usr/sbin/mosquitto)
RUMQTTD=target/peers/bin/rumqttd
case ",$PEERS," in *,rumqttd,*)
  if [ ! -x "$RUMQTTD" ]; then
    echo "installing rumqttd 0.20 into target/peers" >&2
    cargo install rumqttd --version 0.20.0 --locked --root target/peers >/dev/null 2>&1
  fi ;;
esac
case ",$PEERS," in *,nats,*)
  if ! command -v nats-server >/dev/null 2>&1; then
    echo "installing nats-server" >&2
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nats-server >/dev/null
  fi ;;
esac

cargo build --release --bin switchboard 2>/dev/null
cargo bench --bench load --no-run 2>/dev/null
LOAD=$(ls -t target/release/deps/load-* | grep -v '\.d$' | head -1)

work=$(mktemp -d)
cat > "$work/mosquitto.conf" <<CONF
listener $MQ_PORT 127.0.0.1
allow_anonymous true
# Mosquitto leaves Nagle's algorithm on by default, which stalls small messages; Switchboard sets
# TCP_NODELAY. Give Mosquitto the same.
set_tcp_nodelay true
log_type error
log_type warning
persistence false
CONF

# rumqttd: its sample configuration, on loopback, without the 1 ms pause between accepts.
cat > "$work/rumqttd.toml" <<CONF
id = 0
[router]
id = 0
max_connections = 20010
max_outgoing_packet_count = 200
max_segment_size = 104857600
max_segment_count = 10
[v4.1]
name = "v4-1"
listen = "127.0.0.1:$RQ_PORT"
next_connection_delay_ms = 0
    [v4.1.connections]
    connection_timeout_ms = 60000
    max_payload_size = 20480
    max_inflight_count = 100
    dynamic_filters = true
CONF
# nats-server: its MQTT listener needs JetStream and a server name.
cat > "$work/nats.conf" <<CONF
listen: 127.0.0.1:-1
server_name: bench
jetstream { store_dir: "$work/nats" }
mqtt { listen: "127.0.0.1:$NATS_PORT" }
CONF

BROKERS="switchboard mosquitto $(echo "$PEERS" | tr ',' ' ')"
declare -A PID PORT
PORT[switchboard]=$SB_PORT; PORT[mosquitto]=$MQ_PORT; PORT[rumqttd]=$RQ_PORT; PORT[nats]=$NATS_PORT
start_brokers() {
  local broker
  stop_brokers
  RUST_LOG=warn ./target/release/switchboard --port "$SB_PORT" --http-port 0 2>"$work/switchboard.log" &
  PID[switchboard]=$!
  "$MOSQUITTO" -c "$work/mosquitto.conf" 2>"$work/mosquitto.log" &
  PID[mosquitto]=$!
  case ",$PEERS," in *,rumqttd,*)
    "$RUMQTTD" -c "$work/rumqttd.toml" -q >"$work/rumqttd.log" 2>&1 &
    PID[rumqttd]=$! ;;
  esac
  case ",$PEERS," in *,nats,*)
    nats-server -c "$work/nats.conf" >"$work/nats.log" 2>&1 &
    PID[nats]=$! ;;
  esac
  for broker in $BROKERS; do
    for _ in $(seq 100); do
      (exec 3<>"/dev/tcp/127.0.0.1/${PORT[$broker]}") 2>/dev/null && break
      sleep 0.05 # waiting for the broker's port to open
    done
  done
}
stop_brokers() {
  local broker
  for broker in "${!PID[@]}"; do
    kill "${PID[$broker]}" 2>/dev/null && wait "${PID[$broker]}" 2>/dev/null || true
  done
  PID=()
}
# The brokers in turn, the order reversed on even runs.
order_of_run() {
  if [ $(($1 % 2)) -eq 1 ]; then echo "$BROKERS"; else echo "$BROKERS" | tr ' ' '\n' | tac | tr '\n' ' '; fi
}
trap 'stop_brokers; rm -rf "$work"' EXIT

# run LABEL ARGS...: one run against the named broker, appended to $RESULTS.
run() {
  local label=$1; shift
  local results=${RESULTS}
  local port=${PORT[$label]} pid=${PID[$label]}
  # A run that fails (a peer refusing the load) is reported and left out of the tables; the
  # other runs go on.
  if ! "$LOAD" --addr "127.0.0.1:$port" --broker-pid "$pid" --label "$label" --quiet \
    --mqtt "$MQTT" --out "$results" "$@" >/dev/null; then
    echo "FAILED: $label $*" >&2
  fi
}

mkdir -p target
rm -f "$RESULTS"
start_brokers
echo "switchboard $(./target/release/switchboard --version), $("$MOSQUITTO" -h 2>&1 | head -1); $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB" >&2

# What device fleets send, first: one message at a time (window 1: the next once the last was
# delivered; the brokers compared here in memory send the PUBACK by then, and `--window-acked`
# also waits for it, as a device does, for brokers whose PUBACK may come later), an
# open loop over many connections, and the seed's request/response pattern (fleet: 1000 devices,
# 10,000 requests/s, so 20,000 msgs/s through the broker, plus telemetry at 0.2/s per device).
REALISTIC=${RESULTS%.jsonl}-realistic.jsonl
rm -f "$REALISTIC"
for run_no in $(seq "$RUNS"); do
  for broker in $(order_of_run "$run_no"); do
    echo "run $run_no: $broker realistic rows" >&2
    RESULTS=$REALISTIC run "$broker" --scenario pairs --qos 1 --window 1 --clients 8 --duration "$DURATION"
    RESULTS=$REALISTIC run "$broker" --scenario pairs --qos 1 --window 1 --clients 200 --duration "$DURATION"
    RESULTS=$REALISTIC run "$broker" --scenario pairs --qos 0 --window 1 --clients 200 --duration "$DURATION"
    RESULTS=$REALISTIC run "$broker" --scenario pairs --qos 1 --rate 20000 --clients 1000 --duration "$DURATION"
    RESULTS=$REALISTIC run "$broker" --scenario fleet --qos 1 --clients 1000 --rate 10000 --duration "$DURATION"
  done
done

# Pipelined bursts: the best case, 100 messages in flight per publisher.
for run_no in $(seq "$RUNS"); do
  for scenario in pairs fan-in fan-out; do
    for qos in 0 1; do
      for broker in $(order_of_run "$run_no"); do
        echo "run $run_no: $broker $scenario qos $qos" >&2
        run "$broker" --scenario "$scenario" --qos "$qos" --clients "$CLIENTS" --duration "$DURATION"
      done
    done
  done
done

# Latency at half of Mosquitto's peak pairs/QoS 0 rate, open loop.
peak=$(grep '"label":"mosquitto"' "$RESULTS" | grep '"scenario":"pairs"' | grep '"qos":0' \
  | sed 's/.*"delivered_per_s":\([0-9.]*\).*/\1/' | sort -n | awk '{v[NR]=$1} END {print int(v[int((NR+1)/2)])}')
half=$((peak / 2))
for run_no in $(seq "$RUNS"); do
  for broker in switchboard mosquitto; do
    echo "run $run_no: $broker pairs qos 0 at $half msgs/s" >&2
    run "$broker" --scenario pairs --qos 0 --clients "$CLIENTS" --rate "$half" --duration "$DURATION"
  done
done

# The other scenarios, once per run each (their own table below).
OTHER=${RESULTS%.jsonl}-other.jsonl
rm -f "$OTHER"
for run_no in $(seq "$RUNS"); do
  for broker in switchboard mosquitto; do
    echo "run $run_no: $broker wildcard / retained / connect-storm" >&2
    RESULTS=$OTHER run "$broker" --scenario wildcard --clients "$CLIENTS" --topics 100 --duration "$DURATION"
    RESULTS=$OTHER run "$broker" --scenario retained --clients 20 --topics 1000
    RESULTS=$OTHER run "$broker" --scenario connect-storm --concurrency 20 --duration "$DURATION"
  done
done

# Idle connections: fresh brokers, 10,000 connections each.
for broker in switchboard mosquitto; do
  start_brokers
  echo "$broker: 10000 idle connections" >&2
  run "$broker" --scenario idle --clients 10000 --concurrency 200
done
stop_brokers

# The rate at saturation of the open loop and the fleet: fresh brokers offered rising rates until
# each falls behind (benches/saturation.sh; SATURATION=0 leaves it out).
SATURATED=${RESULTS%.jsonl}-saturation.jsonl
if [ "${SATURATION:-1}" != 0 ]; then
  BIN_DIR=target/release BROKERS="switchboard mosquitto" RUNS=$RUNS OUT=$SATURATED \
    SB_PORT=$SB_PORT MQ_PORT=$MQ_PORT MQTT=$MQTT benches/saturation.sh > "$work/saturation.md"
fi

echo "Realistic traffic (window 1, open loop, fleet; CPU per delivered message):"
"$LOAD" --table "$REALISTIC"
echo
echo "Pipelined (100 in flight per publisher):"
"$LOAD" --table "$RESULTS" --chart "$CHART"
echo
echo "Other scenarios (msgs/s: wildcard deliveries, retained messages received, connections):"
"$LOAD" --table "$OTHER"
echo
if [ -s "$work/saturation.md" ]; then
  echo "Rate at saturation (open loop over 1,000 pairs, fleet of 1,000 devices; the most delivered):"
  cat "$work/saturation.md"
  echo
fi
echo "CPU per delivered message (us, median) and idle RSS per connection:"
for label in $BROKERS; do
  grep "\"label\":\"$label\"" "$RESULTS" | sed -n 's/.*"scenario":"\([^"]*\)","qos":\([0-9]\).*"load":"\([^"]*\)".*"broker_cpu_us_per_msg":\([0-9.]*\).*/\1 qos\2 \3 \4/p' \
    | sort | awk -v l="$label" '{k=$1" "$2" "$3; v[k]=v[k]" "$4} END {for (k in v) print l, k, v[k]}' | sort
  grep "\"label\":\"$label\"" "$RESULTS" | grep '"scenario":"idle"' \
    | sed 's/.*"rss_per_connection_bytes":\([0-9.]*\).*/  '"$label"' idle bytes per connection: \1/' || true
done
