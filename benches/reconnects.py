"""Devices that come and go beside a benchmark: every 1/RATE s a clean MQTT 3.1.1 client
(`reconnect-{n}`) connects to 127.0.0.1:PORT, waits for its CONNACK, subscribes to a command
topic of its own (`reconnect/{n}/cmd`, QoS 1), waits for the SUBACK and disconnects, for
DURATION seconds. Used by benches/compaction_pause.sh (RECONNECTS=RATE).

    python3 benches/reconnects.py PORT RATE DURATION
"""

import socket
import sys
import time


def connect_packet(client_id):
    """A CONNECT, protocol level 4, clean session, keep-alive 60 s."""
    ident = client_id.encode()
    body = b"\x00\x04MQTT\x04\x02\x00\x3c" + len(ident).to_bytes(2, "big") + ident
    return bytes([0x10, len(body)]) + body


def read_exactly(s, n):
    """n bytes from socket s (fewer only if it closes)."""
    data = b""
    while len(data) < n:
        more = s.recv(n - len(data))
        if not more:
            break
        data += more
    return data


def main():
    port, rate, duration = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3])
    began = time.monotonic()
    n = 0
    while time.monotonic() - began < duration:
        due = began + n / rate
        pause = due - time.monotonic()
        if pause > 0:
            time.sleep(pause)  # the pace of the arrivals, not a wait for the broker
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(connect_packet(f"reconnect-{n}"))
            ack = read_exactly(s, 4)
            if len(ack) < 4 or ack[0] != 0x20 or ack[3] != 0:
                sys.exit(f"reconnect-{n}: no accepting CONNACK ({ack!r})")
            topic = f"reconnect/{n}/cmd".encode()
            body = b"\x00\x01" + len(topic).to_bytes(2, "big") + topic + b"\x01"
            s.sendall(bytes([0x82, len(body)]) + body)
            ack = read_exactly(s, 5)
            if len(ack) < 5 or ack[0] != 0x90 or ack[4] != 1:
                sys.exit(f"reconnect-{n}: no SUBACK granting QoS 1 ({ack!r})")
            s.sendall(b"\xe0\x00")
        n += 1
    print(n)


if __name__ == "__main__":
    main()
