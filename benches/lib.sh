# Shared by the comparison scripts (ab.sh, spike.sh); sourced, not run: the harness binary, a
# Mosquitto configuration, the alternating order of runs, and waiting for a broker's port.

MOSQUITTO=$(command -v mosquitto || echo /usr/sbin/mosquitto)

# Makes a scratch directory, removed on exit, and sets work to it.
make_work_dir() {
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
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
