#!/usr/bin/env python3
"""Mosquitto's recovery time for the state of Switchboard's recovery measurement (issue 12).

Builds a Mosquitto persistence database holding 1,000,000 retained messages (64-byte payloads,
topics site/{i % 100}/gate/{i}/state) and 100,000 persistent sessions (device-{i}, each
subscribed to detrd/status/request/{i} and cfg/# at QoS 1), the state that
`tests/persistence.rs`'s `recovery_of_a_million_retained_messages_and_100k_sessions` writes
for Switchboard. Then stops Mosquitto (SIGTERM: it saves the database) and starts it again
RUNS times, timing from the start of the process to the moment its listener accepts a
connection (Mosquitto restores the database before it opens its listeners).

    python3 benches/mosquitto_recovery.py            # RUNS=3, page cache warm
    RECOVERY_COLD_CACHE=1 python3 benches/mosquitto_recovery.py   # drop the page cache first (root)
    DB_DIR=/tmp/mq RUNS=1 python3 benches/mosquitto_recovery.py   # keep the database there and
                                                                  # reuse it on the next call, to
                                                                  # alternate with Switchboard

Prints one JSON object per run and the median. Loopback only; the database lives in a
temporary directory that is removed at the end.
"""

import asyncio
import json
import os
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time

from mqtt_packets import connect, free_port, packet, recv_exactly, string

RETAINED = int(os.environ.get("RETAINED", "1000000"))
SESSIONS = int(os.environ.get("SESSIONS", "100000"))
RUNS = int(os.environ.get("RUNS", "3"))
MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"


def start(config):
    return subprocess.Popen([MOSQUITTO, "-c", config], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


def wait_listening(port, deadline_s=600):
    started = time.monotonic()
    while time.monotonic() - started < deadline_s:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.002)
    raise SystemExit("mosquitto did not listen")


def load_retained(port):
    """One connection, QoS 0 retained publishes written in bulk, then a PINGREQ whose answer
    says they were all read."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(connect("loader", True))
    recv_exactly(sock, 4)
    payload = b"x" * 64
    batch = bytearray()
    for i in range(RETAINED):
        body = string(f"site/{i % 100}/gate/{i}/state") + payload
        batch += packet(0x31, body)
        if len(batch) > 1 << 20:
            sock.sendall(batch)
            batch = bytearray()
    sock.sendall(bytes(batch) + b"\xc0\x00")
    assert recv_exactly(sock, 2) == b"\xd0\x00"
    sock.sendall(b"\xe0\x00")
    sock.close()


async def one_session(port, i, gate):
    async with gate:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        sub = struct.pack("!H", 1)
        for topic in (f"detrd/status/request/{i}", "cfg/#"):
            sub += string(topic) + b"\x01"
        writer.write(connect(f"device-{i}", False) + packet(0x82, sub))
        await reader.readexactly(4)  # CONNACK
        await reader.readexactly(6)  # SUBACK of two filters
        writer.write(b"\xe0\x00")
        await writer.drain()
        writer.close()
        await writer.wait_closed()


async def load_sessions(port):
    gate = asyncio.Semaphore(200)
    await asyncio.gather(*(one_session(port, i, gate) for i in range(SESSIONS)))


async def clear_one(port, i, gate):
    """Device i back with a clean session, then gone: its stored session is discarded."""
    async with gate:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(connect(f"device-{i}", True))
        await reader.readexactly(4)  # CONNACK
        writer.write(b"\xe0\x00")
        await writer.drain()
        writer.close()
        await writer.wait_closed()


async def clear_sessions(port):
    """The sessions of load_sessions, each discarded by its device coming back clean."""
    gate = asyncio.Semaphore(200)
    await asyncio.gather(*(clear_one(port, i, gate) for i in range(SESSIONS)))


def stop(process):
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=600)


def drop_page_cache():
    if os.environ.get("RECOVERY_COLD_CACHE"):
        subprocess.run(["sync"], check=False)
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3")


def main():
    kept = os.environ.get("DB_DIR")
    directory = kept or tempfile.mkdtemp(prefix="mosquitto-recovery-")
    os.makedirs(directory, exist_ok=True)
    os.chmod(directory, 0o777)  # started as root, Mosquitto drops to its own user
    db = os.path.join(directory, "mosquitto.db")
    try:
        port = free_port()
        config = os.path.join(directory, "mosquitto.conf")
        with open(config, "w") as f:
            f.write(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence true\n"
                    f"persistence_location {directory}/\nautosave_interval 0\n"
                    "max_queued_messages 1000\nlog_dest none\n")
        if not os.path.exists(db):
            process = start(config)
            wait_listening(port)
            loaded = time.monotonic()
            load_retained(port)
            asyncio.run(load_sessions(port))
            print(json.dumps({"loaded_in_s": round(time.monotonic() - loaded, 1)}), flush=True)
            stop(process)
        print(json.dumps({"database_bytes": os.path.getsize(db)}), flush=True)
        times = []
        for run in range(RUNS):
            drop_page_cache()
            began = time.monotonic()
            process = start(config)
            wait_listening(port)
            elapsed = time.monotonic() - began
            times.append(elapsed)
            print(json.dumps({"run": run + 1, "ready_in_s": round(elapsed, 3)}), flush=True)
            stop(process)
        print(json.dumps({"median_ready_in_s": round(statistics.median(times), 3),
                          "runs": RUNS, "cold_cache": bool(os.environ.get("RECOVERY_COLD_CACHE"))}))
    finally:
        if not kept:
            shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
