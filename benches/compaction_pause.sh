#!/usr/bin/env bash
# What a compaction of a large live state does to the traffic beside it: each broker is loaded
# with RETAINED retained messages of 64 bytes (default 1,000,000: 110 MB of live state), then
# 8 QoS 1 window-1 pairs with persistent subscribers run for DURATION seconds (default 12),
# over which the log doubles and a compaction runs (with SESSIONS below, three or four). Builds in $BIN_DIR are started with
# `[persistence]` in a fresh directory (`fsync = "interval"`), Mosquitto (`mosquitto`, in
# memory: it has no compaction) beside them for the same traffic; the order alternates by run.
#
#   BROKERS="old new mosquitto" RUNS=3 OUT=target/compaction-pause.jsonl benches/compaction_pause.sh
#
# With SESSIONS=N (and RETAINED=0) the state is N persistent sessions instead (device-{i}, each
# subscribed to detrd/status/request/{i} and cfg/# at QoS 1, then disconnected), loaded over
# the network by benches/mosquitto_recovery.py's loader: what a fleet's stored sessions weigh.
# QUEUED=K then publishes K QoS 1 messages of 64 bytes to cfg/all (mosquitto_pub), each queued
# for every one of those offline sessions: SESSIONS x K messages held for offline devices.
# FSYNC sets the builds' policy (default interval); FSYNC=memory runs them without
# `[persistence]`, for what the stored sessions cost beside the traffic without a disk.
# POLL_ADMIN=MS asks each build, while the pairs run, for the first page of the admin API's
# clients and subscriptions every MS milliseconds (what an open dashboard does while lifecycle
# events come: benches/admin_poll.py); the pages' answer times go to ${OUT%.jsonl}-admin.jsonl
# and into the printed line. Mosquitto, which has no such API, runs the pairs alone.
# CLUSTER=1 makes each build a node of a one-node cluster (`[cluster]`, a fresh `nats-server`
# on a free port for each run; Debian's nats-server): what the cluster link's bookkeeping of
# the node's filters costs beside the traffic with SESSIONS devices holding their own filters.
# Mosquitto, which has no clustering, runs the pairs alone. Set DURATION above 30 for a run to
# see the link's periodic check (every 30 s) before 2026-12-07. CLUSTER=2 adds a second node
# of the same build (`peer`) that takes the SESSIONS, the QUEUED messages and the RECONNECTS
# below, while the pairs run on the first, measured one: what a node pays for another node's
# fleet. The pairs start once the measured node knows all of the peer's filters. (Mosquitto
# takes all of it itself, as the one broker of such a fleet.)
# RECONNECTS=RATE adds, beside the pairs and for every broker, a member of a shared group
# (`mosquitto_sub -t '$share/bench/jobs/#'`, as a backend's worker) and RATE clean devices a
# second that connect, subscribe to a command topic of their own and disconnect
# (benches/reconnects.py): with CLUSTER=2 on the peer, like the sessions.
# NATS_BLIP=S (with CLUSTER) restarts the nats-server S seconds into the pairs, on the same
# port: every node loses NATS, reconnects, says Hello and announces all its filters again, and
# each answers the others' Hello with all of its own (with CLUSTER=2 the peer's whole fleet
# reaches the measured node twice): what a rejoin costs the traffic beside it. The run's line
# then gives how many of the peer's filters the measured node knows at the end.
# FLEET=here (with CLUSTER=2) puts the SESSIONS, QUEUED and RECONNECTS on the measured node
# instead, the peer holding none: what a node pays for its own fleet in the cluster (with
# NATS_BLIP, its own rejoin: its Hello, all its filters, and its answer to the peer's Hello).
# The pairs then start once the peer knows all of the measured node's filters, and the line
# gives how many of them the peer knows at the end.
# PAIRS_RATE=R paces the pairs at R messages a second in all (open loop, as devices that
# publish a few messages a second) instead of each publishing its next message once its last
# is delivered (window 1): the broker and the harness then leave the cores some room, and the
# slowest round trip shows what holds the broker's thread rather than what the machine's
# two cores share.
# BACKUP_AT=S fetches a backup of each build (`GET /api/v1/persistence/backup`, to a file in
# the work directory) S seconds into the pairs; the run's line gives how long the fetch took,
# the backup's size, and the broker's "persistence backup written" line (`listed_micros`: how
# long the writer, and every commit with it, was held). Mosquitto runs the pairs alone.
#
# Each run appends the pairs' report to $OUT (rate, round-trip percentiles and the slowest) and
# prints it with the broker's "persistence log compacted" line: its `paused_millis` (every
# commit waited that long in all) and, from 2026-12-06, `longest_pause_micros` (at most at
# once). Loopback only; every run is bounded in time.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN_DIR=${BIN_DIR:-target/ab}
OUT=${OUT:-target/compaction-pause.jsonl}
RUNS=${RUNS:-3}
DURATION=${DURATION:-12}
RETAINED=${RETAINED:-1000000}
SESSIONS=${SESSIONS:-0}
QUEUED=${QUEUED:-0}
FSYNC=${FSYNC:-interval}
BROKERS=${BROKERS:-"new mosquitto"}
POLL_ADMIN=${POLL_ADMIN:-}
CLUSTER=${CLUSTER:-}
RECONNECTS=${RECONNECTS:-}
NATS_BLIP=${NATS_BLIP:-}
FLEET=${FLEET:-}
PAIRS_RATE=${PAIRS_RATE:-}
BACKUP_AT=${BACKUP_AT:-}
ADMIN_OUT=${OUT%.jsonl}-admin.jsonl
MOSQUITTO=${MOSQUITTO:-mosquitto}

# shellcheck source=benches/lib.sh
. benches/lib.sh
build_harness
make_work_dir
nats_pid=""
peer_pid=""
trap 'rm -rf "$work"; kill $nats_pid $peer_pid $(cat "$work/nats.pid" 2>/dev/null) 2>/dev/null || true' EXIT

for run in $(seq "$RUNS"); do
  for broker in $(run_order "$run"); do
    port=$(free_port)
    if [ "$broker" = mosquitto ]; then
      mosquitto_conf "$work/mosquitto.conf" "$port"
      "$MOSQUITTO" -c "$work/mosquitto.conf" 2>/dev/null &
    else
      rm -rf "$work/state" && mkdir -p "$work/state"
      if [ "$FSYNC" = memory ]; then
        : > "$work/sb.toml"
      else
        printf '[persistence]\ndir = "%s/state"\nfsync = "%s"\n' "$work" "$FSYNC" > "$work/sb.toml"
      fi
      if [ -n "$CLUSTER" ]; then
        nats_port=$(free_port)
        nats-server -a 127.0.0.1 -p "$nats_port" > "$work/nats.log" 2>&1 &
        nats_pid=$!
        wait_for_port "$nats_port" || { echo "nats-server did not open $nats_port" >&2; exit 1; }
        printf '[cluster]\nnats_url = "nats://127.0.0.1:%s"\nnode = "bench"\n' "$nats_port" \
          >> "$work/sb.toml"
      fi
      http_port=$(free_port)
      RUST_LOG=info timeout $((DURATION + 120)) "$BIN_DIR/$broker" -c "$work/sb.toml" \
        --port "$port" --http-port "$http_port" > "$work/broker.log" 2>&1 &
    fi
    pid=$!
    wait_for_port "$port" || { echo "$broker did not open port $port" >&2; exit 1; }
    # The broker itself, not the `timeout` around a build: the harness reads its CPU and RSS.
    broker_pid=$(pgrep -P "$pid" | head -1 || true)
    broker_pid=${broker_pid:-$pid}
    fleet_port=$port
    # The node that must know all of the fleet's filters before the pairs: the other one.
    knower_http=${http_port:-}
    if [ "$CLUSTER" = 2 ] && [ "$broker" != mosquitto ]; then
      peer_port=$(free_port)
      peer_http=$(free_port)
      sed 's/^node = "bench"$/node = "peer"/' "$work/sb.toml" > "$work/peer.toml"
      RUST_LOG=warn timeout $((DURATION + 600)) "$BIN_DIR/$broker" -c "$work/peer.toml" \
        --port "$peer_port" --http-port "$peer_http" > "$work/peer.log" 2>&1 &
      peer_pid=$!
      wait_for_port "$peer_port" || { echo "the peer did not open $peer_port" >&2; exit 1; }
      if [ "$FLEET" = here ]; then
        knower_http=$peer_http
      else
        fleet_port=$peer_port
      fi
    fi
    if [ "$RETAINED" -gt 0 ]; then
      "$LOAD" --addr "127.0.0.1:$port" --broker-pid "$broker_pid" --quiet --scenario retained \
        --topics "$RETAINED" --clients 1 --out /dev/null > /dev/null
    fi
    if [ "$SESSIONS" -gt 0 ]; then
      SESSIONS=$SESSIONS python3 -c "import asyncio, sys; sys.path.insert(0, 'benches'); \
import mosquitto_recovery as m; asyncio.run(m.load_sessions($fleet_port))"
      for _ in $(seq "$QUEUED"); do
        mosquitto_pub -p "$fleet_port" -q 1 -t cfg/all -m "$(printf '%064d' 0)"
      done
    fi
    if [ -n "$peer_pid" ]; then
      # The other node knows every filter of the fleet's node (and cfg/#) before the pairs.
      want=$((SESSIONS + 1))
      for _ in $(seq 1200); do
        held=$(curl -s "http://127.0.0.1:$knower_http/api/v1/cluster" | jq '[.nodes[].filters] | add // 0')
        [ "$held" -ge "$want" ] && break
        sleep 0.5 # polling the admin API: the node gives no other sign
      done
      [ "$held" -ge "$want" ] || { echo "$broker: the other node knows $held of the fleet's $want filters" >&2; exit 1; }
    fi
    poller=""
    polled=""
    if [ -n "$POLL_ADMIN" ] && [ "$broker" != mosquitto ]; then
      python3 benches/admin_poll.py "http://127.0.0.1:$http_port" "$POLL_ADMIN" "$DURATION" \
        "$work/poll.json" &
      poller=$!
    fi
    churn=""
    if [ -n "$RECONNECTS" ]; then
      mosquitto_sub -p "$fleet_port" -q 1 -t '$share/bench/jobs/#' > /dev/null &
      member=$!
      python3 benches/reconnects.py "$fleet_port" "$RECONNECTS" "$DURATION" > "$work/reconnects" &
      churn=$!
    fi
    blipper=""
    if [ -n "$NATS_BLIP" ] && [ -n "$nats_pid" ]; then
      rm -f "$work/nats.pid"
      (
        sleep "$NATS_BLIP" # a moment in the run to disturb, not a synchronisation
        kill "$nats_pid"
        while kill -0 "$nats_pid" 2>/dev/null; do sleep 0.01; done
        nats-server -a 127.0.0.1 -p "$nats_port" >> "$work/nats.log" 2>&1 &
        echo $! > "$work/nats.pid"
      ) &
      blipper=$!
    fi
    backer=""
    if [ -n "$BACKUP_AT" ] && [ "$broker" != mosquitto ]; then
      (
        sleep "$BACKUP_AT" # a moment in the run to take it, not a synchronisation
        curl -fsS -o "$work/backup.log" -w '%{time_total} s, %{size_download} bytes' \
          "http://127.0.0.1:$http_port/api/v1/persistence/backup" > "$work/backup.took"
      ) &
      backer=$!
    fi
    pace=(--window 1)
    [ -n "$PAIRS_RATE" ] && pace=(--rate "$PAIRS_RATE")
    "$LOAD" --addr "127.0.0.1:$port" --broker-pid "$broker_pid" --label "$broker" --quiet \
      --scenario pairs --qos 1 --clients 8 "${pace[@]}" --persistent-subscribers \
      --duration "$DURATION" --out "$OUT" > /dev/null
    if [ -n "$blipper" ]; then
      wait "$blipper"
      nats_pid=$(cat "$work/nats.pid")
      known=$(curl -s "http://127.0.0.1:$knower_http/api/v1/cluster" | jq '[.nodes[].filters] | add // 0')
      joins=$(grep -c 'cluster: connected to NATS' "$work/broker.log" || true)
      knower=measured
      [ "$FLEET" = here ] && knower=peer
      polled="connected to NATS $joins times, the $knower node knows $known filters of the other; "
    fi
    if [ -n "$backer" ]; then
      wait "$backer" || true
      polled="${polled}backup fetched in $(cat "$work/backup.took"): $(grep -o 'persistence backup written.*' "$work/broker.log" || true); "
      rm -f "$work/backup.log"
    fi
    if [ -n "$churn" ]; then
      wait "$churn"
      kill "$member" && wait "$member" 2>/dev/null || true
      polled="$polled$(cat "$work/reconnects") reconnects; "
    fi
    if [ -n "$poller" ]; then
      wait "$poller"
      jq -c --arg b "$broker" --argjson run "$run" '{label: $b, run: $run} + .' "$work/poll.json" \
        >> "$ADMIN_OUT"
      polled=$polled$(jq -r '"admin pages: \(.pages), median \(.median_ms) ms, p99 \(.p99_ms) ms, slowest \(.slowest_ms) ms; "' "$work/poll.json")
    fi
    kill "$pid" && wait "$pid" 2>/dev/null || true
    if [ -n "$peer_pid" ]; then
      kill "$peer_pid" && wait "$peer_pid" 2>/dev/null || true
      peer_pid=""
    fi
    if [ -n "$nats_pid" ]; then
      kill "$nats_pid" && wait "$nats_pid" 2>/dev/null || true
      nats_pid=""
    fi
    compacted="(in memory)"
    if [ "$broker" != mosquitto ] && [ "$FSYNC" != memory ]; then
      compacted=$(grep -o 'persistence log compacted.*' "$work/broker.log" | tr '\n' ' ' || true)
    fi
    tail -1 "$OUT" | jq -r --arg c "$compacted" --arg p "$polled" --argjson run "$run" \
      '"run \($run) \(.label): \(.delivered_per_s | floor) msgs/s, p99 \(.latency_us.p99) µs, p99.9 \(.latency_us.p999) µs, slowest \(.latency_us.max) µs; \($p)\($c)"'
  done
done
