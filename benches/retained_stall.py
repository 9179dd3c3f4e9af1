#!/usr/bin/env python3
"""How long one client's SUBSCRIBE to `#` over a large retained store holds up everyone else.

A loader publishes COUNT retained messages (QoS 0, `site/{n/1000}/gate/{n}/state`, 6-byte
payloads) and waits for a PINGRESP. Then a probe client pings the broker in a loop (one PINGREQ
at a time, 1 ms apart) while another client subscribes to `#` and reads every retained message
that comes. The probe's slowest round trip is how long the broker left other clients waiting
(on one thread, as both brokers run on two cores by default). Kinds, alternating run by run:

- `switchboard`: target/release/switchboard on defaults (one worker, the Registry beside it);
- `mosquitto`: Debian's Mosquitto, in memory.

    python3 benches/retained_stall.py                  # RUNS=3 COUNT=200000
    COUNT=1000000 RUNS=5 python3 benches/retained_stall.py

Builds nothing: needs target/release/switchboard (`cargo build --release`) and mosquitto. Prints
one JSON object per run and the medians over the runs. Loopback only; every broker is stopped
at the end of its run.
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
import threading
import time

from mqtt_packets import connect, free_port, packet, recv_exactly, string, wait_for_port

COUNT = int(os.environ.get("COUNT", "200000"))
RUNS = int(os.environ.get("RUNS", "3"))
KINDS = os.environ.get("KINDS", "switchboard mosquitto").split()
SWITCHBOARD = os.environ.get("SWITCHBOARD", "target/release/switchboard")


def connect_client(port, client_id):
    """A connected MQTT 3.1.1 client (clean session), its CONNACK read."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.sendall(connect(client_id, True, keep_alive=600))
    if recv_exactly(sock, 4) != b"\x20\x02\x00\x00":
        sys.exit("CONNACK refused")
    return sock


def load(port):
    loader = connect_client(port, "loader")
    batch = bytearray()
    for n in range(COUNT):
        topic = f"site/{n // 1000}/gate/{n}/state"
        batch += packet(0x31, string(topic) + b"closed")
        if len(batch) > 1 << 20:
            loader.sendall(batch)
            batch = bytearray()
    loader.sendall(batch + b"\xc0\x00")
    if recv_exactly(loader, 2) != b"\xd0\x00":
        sys.exit("no PINGRESP after the load")
    return loader


def one_run(kind):
    port = free_port()
    work = tempfile.mkdtemp()
    if kind == "switchboard":
        cmd = [SWITCHBOARD, "--port", str(port)]
    else:
        conf = os.path.join(work, "mosquitto.conf")
        with open(conf, "w") as f:
            f.write(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
            f.write("set_tcp_nodelay true\nlog_type error\n")
        cmd = [shutil.which("mosquitto") or "/usr/sbin/mosquitto", "-c", conf]
    broker = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port)
        loader = load(port)
        probe = connect_client(port, "probe")
        greedy = connect_client(port, "greedy")
        rtts, stop = [], threading.Event()

        def ping():
            while not stop.is_set():
                start = time.perf_counter()
                probe.sendall(b"\xc0\x00")
                recv_exactly(probe, 2)
                rtts.append(time.perf_counter() - start)
                time.sleep(0.001)

        pinger = threading.Thread(target=ping)
        pinger.start()
        time.sleep(0.2)
        start = time.perf_counter()
        greedy.sendall(packet(0x82, struct.pack("!H", 1) + string("#") + b"\x00"))
        # The SUBACK and every retained message: read until all of them came.
        received, suback = bytearray(), None
        expected = sum(4 + len(f"site/{n // 1000}/gate/{n}/state") + 6 for n in range(COUNT))
        while len(received) < expected + 5:
            more = greedy.recv(1 << 20)
            if not more:
                sys.exit("the subscriber was disconnected")
            received += more
            if suback is None and b"\x90\x03\x00\x01\x00" in received[:64]:
                suback = time.perf_counter() - start
        delivered = time.perf_counter() - start
        time.sleep(0.2)
        stop.set()
        pinger.join()
        for sock in (loader, probe, greedy):
            sock.close()
        return {
            "kind": kind,
            "retained": COUNT,
            "suback_ms": round(suback * 1e3, 2) if suback is not None else None,
            "all_delivered_ms": round(delivered * 1e3, 1),
            "probe_pings": len(rtts),
            "probe_p50_ms": round(statistics.median(rtts) * 1e3, 3),
            "probe_max_ms": round(max(rtts) * 1e3, 1),
        }
    finally:
        broker.terminate()
        broker.wait()
        shutil.rmtree(work, ignore_errors=True)


def main():
    results = []
    for run in range(1, RUNS + 1):
        order = KINDS if run % 2 else list(reversed(KINDS))
        for kind in order:
            result = one_run(kind)
            result["run"] = run
            print(json.dumps(result), flush=True)
            results.append(result)
    for kind in KINDS:
        mine = [r for r in results if r["kind"] == kind]
        medians = {
            key: statistics.median(r[key] for r in mine)
            for key in ("all_delivered_ms", "probe_p50_ms", "probe_max_ms")
        }
        print(json.dumps({"kind": kind, "median_of_runs": len(mine), **medians}))


if __name__ == "__main__":
    main()
