"""MQTT 3.1.1 packets as bytes, for the benchmark scripts that speak to a broker without a
client library (`mosquitto_recovery.py`, `suback_latency.py`)."""

import socket
import struct


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
