#!/usr/bin/env bash
# A flood of wrong passwords whose connections close at once, without waiting for their
# CONNACK, from one loopback address: what each broker is left holding. Builds of Switchboard
# side by side (binaries in $BIN_DIR, as for ab.sh) and Mosquitto, with one password file
# (`gate`, `switchboard passwd`'s default 100,000 rounds), alternating the order per run.
#
#   BROKERS="before after mosquitto" RUNS=3 benches/close_flood.sh
#   TLS=1 BROKERS="before after mosquitto" RUNS=3 benches/close_flood.sh   # over TLS 1.3
#   WS=1 BROKERS="before after mosquitto" RUNS=3 benches/close_flood.sh    # over WebSocket
#
# Per broker and run: CONNECTs sent per second (`load --scenario connect-storm --close-at-once`,
# `--concurrency` 4, 5 s, each flood from a loopback address of its own; with TLS=1 over each
# broker's TLS listener, every connection a full handshake, then the CONNECT, close_notify and
# end of stream; with WS=1 over each broker's WebSocket listener at /mqtt, the upgrade, then the
# CONNECT in a binary frame, a Close frame and end of stream), the connections the broker still holds for them when the flood ends (its open
# sockets beyond those it had before: the client closed, the broker has not), how long until it
# holds none (at most 30 s), and the broker's CPU seconds from the start of the flood to then.
# Loopback only.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN_DIR=${BIN_DIR:-target/ab}
RUNS=${RUNS:-3}
BROKERS=${BROKERS:-"after mosquitto"}
SB_PORT=${SB_PORT:-18840}
MQ_PORT=${MQ_PORT:-18841}

# shellcheck source=benches/lib.sh
. benches/lib.sh
build_harness
make_work_dir
# Mosquitto started as root reads its files as the user `mosquitto`.
chmod 755 "$work"
cargo build --release --bin switchboard 2>/dev/null
printf 'gate-secret\n' | target/release/switchboard passwd "$work/passwords" gate >/dev/null
chmod 644 "$work/passwords"
printf '[auth]\npassword_file = "%s"\n' "$work/passwords" > "$work/switchboard.toml"
flood_args=()
if [ "${TLS:-0}" = 1 ]; then
  make_tls_files
  SB_TLS=$((SB_PORT + 10)) MQ_TLS=$((MQ_PORT + 10))
  printf '[tls]\nport = %s\ncert_file = "%s"\nkey_file = "%s"\n' "$SB_TLS" \
    "$work/server.pem" "$work/server.key" >> "$work/switchboard.toml"
  mosquitto_conf "$work/mosquitto.conf" "$MQ_PORT" "password_file $work/passwords" \
    "listener $MQ_TLS 127.0.0.1" "certfile $work/server.pem" "keyfile $work/server.key"
  flood_args=(--tls-ca "$work/ca.pem")
elif [ "${WS:-0}" = 1 ]; then
  SB_WS=$((SB_PORT + 20)) MQ_WS=$((MQ_PORT + 20))
  printf '[websocket]\nport = %s\n' "$SB_WS" >> "$work/switchboard.toml"
  mosquitto_conf "$work/mosquitto.conf" "$MQ_PORT" "password_file $work/passwords" \
    "listener $MQ_WS 127.0.0.1" "protocol websockets"
  flood_args=(--ws-path /mqtt)
else
  mosquitto_conf "$work/mosquitto.conf" "$MQ_PORT" "password_file $work/passwords"
fi

sockets() { find "/proc/$1/fd" -lname 'socket:*' 2>/dev/null | wc -l; }
# The broker's sockets beyond the $base it had before the flood.
held() { echo $(($(sockets "$pid") - base)); }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

source_no=0
for run_no in $(seq "$RUNS"); do
  for broker in $(run_order "$run_no"); do
    # Each flood from a loopback address of its own: sent from one address, the floods after
    # the first ran at a tenth of the rate, the closed connections before still holding that
    # address's ports.
    source_no=$((source_no + 1))
    if [ "$broker" = mosquitto ]; then
      port=$MQ_PORT
      "$MOSQUITTO" -c "$work/mosquitto.conf" 2>/dev/null &
    else
      port=$SB_PORT
      RUST_LOG=warn "$BIN_DIR/$broker" -c "$work/switchboard.toml" --port "$port" \
        --http-port 0 2>/dev/null &
    fi
    pid=$!
    wait_for_port "$port" || { echo "$broker did not open port $port" >&2; exit 1; }
    flood_port=$port
    if [ "${TLS:-0}" = 1 ]; then
      if [ "$broker" = mosquitto ]; then flood_port=$MQ_TLS; else flood_port=$SB_TLS; fi
    elif [ "${WS:-0}" = 1 ]; then
      if [ "$broker" = mosquitto ]; then flood_port=$MQ_WS; else flood_port=$SB_WS; fi
    fi
    wait_for_port "$flood_port" || { echo "$broker did not open port $flood_port" >&2; exit 1; }
    base=$(sockets "$pid")
    before=$(cpu_ticks "$pid")
    sent=$("$LOAD" --addr "127.0.0.1:$flood_port" --broker-pid "$pid" --scenario connect-storm \
      --concurrency 4 --username gate --password wrong --close-at-once "${flood_args[@]}" \
      --source-address "127.0.200.$source_no" --duration 5 --warmup 0 --quiet --json \
      | python3 -c 'import json, sys; print(round(json.load(sys.stdin)["sent_per_s"]))')
    ended=$(date +%s.%N)
    at_end=$(held)
    drained="over 30"
    for _ in $(seq 300); do
      if [ "$(held)" -le 0 ]; then
        drained=$(python3 -c "import time; print(round(time.time() - $ended, 1))")
        break
      fi
      sleep 0.1 # polling: nothing announces that a broker let a socket go
    done
    cpu=$(python3 -c "print(round(($(cpu_ticks "$pid") - $before) / $(getconf CLK_TCK), 1))")
    echo "run $run_no $broker: $sent CONNECTs/s; held at the end $at_end, still held 30 s later $(held); none held after $drained s; broker CPU $cpu s"
    # Killed: a build that still holds thousands of connections may take its time to stop.
    kill -9 "$pid"
    wait "$pid" 2>/dev/null || true
  done
done
