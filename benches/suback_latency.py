#!/usr/bin/env python3
"""What the cluster's subscribe barrier costs a SUBSCRIBE: the time from SUBSCRIBE to SUBACK.

A client subscribes, one SUBSCRIBE at a time, to COUNT filters its broker does not hold yet
(`suback/<run>/<n>`, QoS 1), and the script times each SUBSCRIBE to its SUBACK. Kinds:

- `switchboard`: one Switchboard, no cluster;
- `cluster2`, `cluster3`: that many Switchboard nodes on one Debian nats-server, the client on
  node `a` (a new filter's SUBACK waits until every other node forwards it:
  `cluster.subscribe_wait`);
- `mosquitto`: one Mosquitto.

    python3 benches/suback_latency.py                  # RUNS=3 COUNT=500, kinds alternating
    KINDS="switchboard cluster3" RUNS=5 python3 benches/suback_latency.py

Builds nothing: needs target/release/switchboard (`cargo build --release`), nats-server and
mosquitto. Prints one JSON object per run (p50, p99, max in microseconds) and the medians over
the runs. Loopback only; every process is stopped at the end.
"""

import json
import os
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request

from mqtt_packets import connect, free_port, packet, recv_exactly, string, wait_for_port

RUNS = int(os.environ.get("RUNS", "3"))
COUNT = int(os.environ.get("COUNT", "500"))
KINDS = os.environ.get("KINDS", "switchboard cluster2 cluster3 mosquitto").split()
SWITCHBOARD = os.environ.get("SWITCHBOARD", "target/release/switchboard")
MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"


def read_packet(sock):
    """One whole packet: (first byte, body)."""
    first = sock.recv(1)
    if not first:
        sys.exit("the broker closed the connection")
    length, shift = 0, 0
    while True:
        byte = sock.recv(1)[0]
        length |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            break
    return first[0], recv_exactly(sock, length)


def measure(port, run):
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.sendall(connect(f"suback-{run}", True))
    kind, body = read_packet(sock)
    if kind != 0x20 or body[1] != 0:
        sys.exit(f"CONNACK refused: {body!r}")
    times = []
    for n in range(COUNT):
        pid = n % 65535 + 1
        body = struct.pack("!H", pid) + string(f"suback/{run}/{n}") + bytes([1])
        start = time.perf_counter()
        sock.sendall(packet(0x82, body))
        while True:
            kind, answer = read_packet(sock)
            if kind == 0x90 and struct.unpack("!H", answer[:2])[0] == pid:
                break
        times.append((time.perf_counter() - start) * 1e6)
    sock.sendall(bytes([0xE0, 0]))
    sock.close()
    times.sort()
    return {
        "p50": round(times[len(times) // 2]),
        "p99": round(times[int(len(times) * 0.99)]),
        "max": round(times[-1]),
    }


def knows_nodes(http_port, count):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/api/v1/cluster", timeout=1) as r:
            return len(json.load(r).get("nodes", [])) == count
    except OSError:
        return False


def start(kind, work):
    """Starts `kind`; returns the processes and the MQTT port of the node measured."""
    procs = []
    log = subprocess.DEVNULL
    env = dict(os.environ, RUST_LOG="warn")
    if kind == "mosquitto":
        port = free_port()
        conf = os.path.join(work, "mosquitto.conf")
        with open(conf, "w") as f:
            f.write(f"listener {port} 127.0.0.1\nallow_anonymous true\nset_tcp_nodelay true\n")
        procs.append(subprocess.Popen([MOSQUITTO, "-c", conf], stdout=log, stderr=log))
        wait_for_port(port)
        return procs, port
    if kind == "switchboard":
        port = free_port()
        procs.append(
            subprocess.Popen(
                [SWITCHBOARD, "--port", str(port), "--http-port", "0"], stdout=log, stderr=log, env=env
            )
        )
        wait_for_port(port)
        return procs, port
    nodes = int(kind.removeprefix("cluster"))
    nats = free_port()
    procs.append(subprocess.Popen(["nats-server", "-a", "127.0.0.1", "-p", str(nats)], stdout=log, stderr=log))
    wait_for_port(nats)
    ports = []
    for node in "abcdefgh"[:nodes]:
        port, http = free_port(), free_port()
        conf = os.path.join(work, f"{node}.toml")
        with open(conf, "w") as f:
            f.write(f'[cluster]\nnats_url = "nats://127.0.0.1:{nats}"\nnode = "{node}"\n')
        procs.append(
            subprocess.Popen(
                [SWITCHBOARD, "-c", conf, "--port", str(port), "--http-port", str(http)],
                stdout=log,
                stderr=log,
                env=env,
            )
        )
        ports.append((port, http))
    for port, http in ports:
        wait_for_port(port)
        end = time.monotonic() + 10
        while not knows_nodes(http, nodes - 1):
            if time.monotonic() > end:
                sys.exit(f"node on {port} did not learn of the other nodes")
            time.sleep(0.02)
    return procs, ports[0][0]


def main():
    if not os.path.exists(SWITCHBOARD):
        sys.exit(f"{SWITCHBOARD} missing: cargo build --release")
    results = {kind: [] for kind in KINDS}
    with tempfile.TemporaryDirectory() as work:
        for run in range(1, RUNS + 1):
            order = KINDS if run % 2 else list(reversed(KINDS))
            for kind in order:
                procs, port = start(kind, work)
                try:
                    figures = measure(port, run)
                finally:
                    for proc in procs:
                        proc.terminate()
                    for proc in procs:
                        proc.wait(timeout=10)
                figures.update(kind=kind, run=run, count=COUNT)
                print(json.dumps(figures), flush=True)
                results[kind].append(figures)
    print(f"| kind | SUBSCRIBE to SUBACK p50 µs | p99 µs | max µs |  (medians of {RUNS} runs of {COUNT})")
    print("|---|---|---|---|")
    for kind, runs in results.items():
        med = {k: statistics.median(r[k] for r in runs) for k in ("p50", "p99", "max")}
        print(f"| {kind} | {med['p50']:.0f} | {med['p99']:.0f} | {med['max']:.0f} |")


if __name__ == "__main__":
    main()
