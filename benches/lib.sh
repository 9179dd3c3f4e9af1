# Shared by the comparison scripts (ab.sh, spike.sh, the TLS ones); sourced, not run: the
# harness binary, a Mosquitto configuration, TLS files, the alternating order of runs, and
# waiting for a broker's port.

MOSQUITTO=$(command -v mosquitto || echo /usr/sbin/mosquitto)

# Makes a scratch directory, removed on exit, and sets work to it.
make_work_dir() {
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
}

# Writes a CA and a server certificate for localhost and 127.0.0.1, both ECDSA P-256, into
# $work: ca.pem, server.pem and server.key (readable by the user `mosquitto`, as which
# Mosquitto started as root reads them).
make_tls_files() {
  command -v openssl >/dev/null || { echo "$0 needs openssl" >&2; exit 1; }
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
    -subj "/CN=bench CA" -keyout "$work/ca.key" -out "$work/ca.pem" 2>/dev/null
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -subj "/CN=localhost" -keyout "$work/server.key" -out "$work/server.csr" 2>/dev/null
  printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\n' > "$work/san.ext"
  openssl x509 -req -in "$work/server.csr" -CA "$work/ca.pem" -CAkey "$work/ca.key" \
    -CAcreateserial -days 2 -extfile "$work/san.ext" -out "$work/server.pem" 2>/dev/null
  chmod a+rx "$work"
  chmod a+r "$work"/*.pem "$work"/*.key
}

# After make_tls_files: $work/switchboard.toml (plain TCP on $1, TLS on $2, no HTTP server) and
# $work/mosquitto.conf (plain TCP on $3, TLS on $4), both serving server.pem.
tls_broker_confs() {
  cat > "$work/switchboard.toml" <<TOML
[listener]
port = $1
[http]
enabled = false
[tls]
port = $2
cert_file = "$work/server.pem"
key_file = "$work/server.key"
TOML
  mosquitto_conf "$work/mosquitto.conf" "$3" \
    "listener $4 127.0.0.1" "certfile $work/server.pem" "keyfile $work/server.key"
}

# After tls_broker_confs: starts $1, `mosquitto`, `switchboard` (target/release) or a build in
# ${BIN_DIR:-target/ab}, sets pid, plain and tls to its process and ports, and returns once its
# TLS port is open.
start_tls_broker() {
  local bin=target/release/switchboard
  [ "$1" = switchboard ] || bin="${BIN_DIR:-target/ab}/$1"
  if [ "$1" = mosquitto ]; then
    "$MOSQUITTO" -c "$work/mosquitto.conf" 2>/dev/null &
    pid=$!
    plain=$MQ_PORT tls=$MQ_TLS
  else
    RUST_LOG=warn "$bin" -c "$work/switchboard.toml" 2>/dev/null &
    pid=$!
    plain=$SB_PORT tls=$SB_TLS
  fi
  wait_for_port "$tls" || { echo "$1 did not open port $tls" >&2; exit 1; }
}

# Sets args to the harness arguments of row $1 (the rows of ab.sh and tls_flows.sh; ab.sh's
# header lists them), or exits on a row it does not know.
set_row_args() {
  case $1 in
    w1_8) args="--scenario pairs --qos 1 --window 1 --clients 8" ;;
    w1a_8) args="--scenario pairs --qos 1 --window 1 --clients 8 --window-acked" ;;
    w1_200) args="--scenario pairs --qos 1 --window 1 --clients 200" ;;
    w1a_200) args="--scenario pairs --qos 1 --window 1 --clients 200 --window-acked" ;;
    w1a_2000) args="--scenario pairs --qos 1 --window 1 --clients 2000 --window-acked" ;;
    q0_200) args="--scenario pairs --qos 0 --window 1 --clients 200" ;;
    open) args="--scenario pairs --qos 1 --rate 20000 --clients 1000" ;;
    fleet) args="--scenario fleet --qos 1 --clients 1000 --rate 10000" ;;
    fleet20) args="--scenario fleet --qos 1 --clients 1000 --rate 20000" ;;
    fleet10k) args="--scenario fleet --qos 1 --clients 10000 --rate 10000" ;;
    pipe0) args="--scenario pairs --qos 0 --clients 8" ;;
    pipe1) args="--scenario pairs --qos 1 --clients 8" ;;
    fanout) args="--scenario fan-out --qos 0 --clients 8" ;;
    fanout1) args="--scenario fan-out --qos 1 --clients 8" ;;
    fanin0) args="--scenario fan-in --qos 0 --clients 8" ;;
    fanin) args="--scenario fan-in --qos 1 --clients 8" ;;
    idle) args="--scenario idle --clients 10000 --concurrency 200" ;;
    idle_max) args="--scenario idle --clients ${IDLE_MAX:-19000} --concurrency 200" ;;
    storm) args="--scenario connect-storm --concurrency 20" ;;
    retained) args="--scenario retained --clients 20 --topics 1000" ;;
    wild) args="--scenario wildcard --clients 8 --topics 100" ;;
    r10k) args="--scenario pairs --qos 1 --rate 10000 --clients 100" ;;
    r10k_idle) args="--scenario pairs --qos 1 --rate 10000 --clients 100 --idle-beside 10000 --concurrency 200" ;;
    *) echo "unknown row $1" >&2; exit 2 ;;
  esac
}

# Starts broker $1 (`mosquitto`, with "$work/mosquitto.conf", or a build in $BIN_DIR) listening
# on port $2, sets pid, and returns once the port is open.
start_broker() {
  if [ "$1" = mosquitto ]; then
    "$MOSQUITTO" -c "$work/mosquitto.conf" 2>/dev/null &
  else
    RUST_LOG=warn "$BIN_DIR/$1" --port "$2" 2>/dev/null &
  fi
  pid=$!
  wait_for_port "$2" || { echo "$1 did not open port $2" >&2; exit 1; }
}

# For the memory spikes (held_spike.sh, fanout_spike.sh): starts broker $1 listening on port $2,
# Mosquitto as start_broker does, a Switchboard build in $BIN_DIR with `[persistence]`
# (`fsync = "interval"`, then any further lines given) in a fresh directory under $work and no
# HTTP server; sets pid, and returns once the port is open.
start_spike_broker() {
  local broker=$1 port=$2
  shift 2
  if [ "$broker" = mosquitto ]; then
    start_broker mosquitto "$port"
    return
  fi
  rm -rf "$work/state"
  {
    printf '[persistence]\ndir = "%s"\nfsync = "interval"\n' "$work/state"
    if [ $# -gt 0 ]; then printf '%s\n' "$@"; fi
  } > "$work/switchboard.toml"
  RUST_LOG=warn "$BIN_DIR/$broker" --port "$port" --http-port 0 -c "$work/switchboard.toml" 2>/dev/null &
  pid=$!
  wait_for_port "$port" || { echo "$broker did not open port $port" >&2; exit 1; }
}

# The resident memory of process $1 in MB, one decimal.
rss_mb() { awk '/VmRSS/ {printf "%.1f", $2 / 1024}' "/proc/$1/status"; }

# Builds the load harness and sets LOAD to its binary.
build_harness() {
  cargo bench --bench load --no-run 2>/dev/null
  LOAD=$(ls -t target/release/deps/load-* | grep -v '\.d$' | head -1)
}

# Writes to $1 a Mosquitto configuration listening on 127.0.0.1:$2, in memory, with TCP_NODELAY,
# followed by any further lines given.
mosquitto_conf() {
  local file=$1 port=$2
  shift 2
  {
    printf 'listener %s 127.0.0.1\nallow_anonymous true\nset_tcp_nodelay true\n' "$port"
    printf 'persistence false\nlog_type error\n'
    if [ $# -gt 0 ]; then printf '%s\n' "$@"; fi
  } > "$file"
}

# The brokers of $BROKERS in the order of run $1: as given in odd runs, reversed in even ones.
run_order() {
  if [ $(($1 % 2)) -eq 1 ]; then echo "$BROKERS"; else echo "$BROKERS" | tr ' ' '\n' | tac | tr '\n' ' '; fi
}

# Prints a free loopback port.
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# Returns once something listens on 127.0.0.1:$1, or fails after about 5 s.
wait_for_port() {
  for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.05 # polling the port: a broker gives no other sign that it listens
  done
  return 1
}

# Prints, for each broker of $BROKERS, one table row of the medians of its lines in $1 (lines
# of "broker value value ..."), each divided by $2 (1 if not given), to one decimal.
median_rows() {
  local file=$1 divisor=${2:-1} broker
  for broker in $BROKERS; do
    awk -v b="$broker" '$1 == b' "$file" | python3 -c '
import sys, statistics
rows = [list(map(float, l.split()[1:])) for l in sys.stdin]
cols = [statistics.median(c) / float(sys.argv[2]) for c in zip(*rows)]
print("| " + sys.argv[1] + " | " + " | ".join(f"{c:.1f}" for c in cols) + " |")' "$broker" "$divisor"
  done
}
