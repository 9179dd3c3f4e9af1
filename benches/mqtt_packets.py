"""MQTT 3.1.1 packets as bytes, and the socket chores around them, for the benchmark scripts that
speak to a broker without a client library (`mosquitto_recovery.py`, `suback_latency.py`,
`retained_stall.py`)."""

import socket
import struct
import sys
import time


def remaining_length(n):
    """The Remaining Length field for `n` bytes."""
    out = bytearray()
    while True:
        byte = n % 128
        n //= 128
        if n:
            byte |= 0x80
        out.append(byte)
        if not n:
            return bytes(out)


def string(s):
    """A UTF-8 string with its two-byte length."""
    data = s.encode()
    return struct.pack("!H", len(data)) + data


def packet(first, body):
    """A whole packet: the first byte, the Remaining Length, the body."""
    return bytes([first]) + remaining_length(len(body)) + body


def connect(client_id, clean, keep_alive=60):
    """CONNECT for MQTT 3.1.1."""
    flags = 0x02 if clean else 0x00
    body = string("MQTT") + bytes([4, flags]) + struct.pack("!H", keep_alive) + string(client_id)
    return packet(0x10, body)


def free_port():
    """A loopback port nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port, deadline=10.0):
    """Returns once something listens on 127.0.0.1:`port`; exits after `deadline` seconds."""
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.02)  # polling the port: a broker gives no other sign that it listens
    sys.exit(f"nothing listens on 127.0.0.1:{port}")


def recv_exactly(sock, n):
    """`n` bytes from `sock`; exits if the connection closes first."""
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            sys.exit("connection closed")
        data += chunk
    return data
