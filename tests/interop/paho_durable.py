"""paho-mqtt (Python) as a device fleet's clients across a broker killed with SIGKILL.

Usage: python3 paho_durable.py MODE PORT [ARG]
  subscribe PORT      connect as "gate-sub" with clean session 0, subscribe to gate/# at QoS 1,
                      print "ready", then one line per message ("got N", N its payload) until
                      the connection is lost.
  publish PORT N      publish gate/state/N for N = 0.. at QoS 1 (paho's default of 20 in
                      flight, the rest queued in paho) and print "acked N" for each PUBACK,
                      until the connection is lost.
  resume PORT         connect as "gate-sub" again, clean session 0 and no SUBSCRIBE, print
                      "present 0|1", then publish gate/end from another client and print one
                      line per message until gate/end arrives ("got end").
Every line is flushed as it is printed: the caller reads them while the script runs.
"""
import sys
import threading

import paho.mqtt.client as mqtt

mode, port = sys.argv[1], int(sys.argv[2])
lost = threading.Event()


def say(line):
    print(line, flush=True)


def client(client_id, clean_session):
    c = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=mqtt.MQTTv311,
        clean_session=clean_session,
    )
    c.on_disconnect = lambda *args: lost.set()
    return c


def print_payloads(c, end=None):
    def on_message(_client, _userdata, msg):
        if msg.topic == "gate/end":
            say("got end")
            if end is not None:
                end.set()
        else:
            say(f"got {msg.payload.decode()}")

    c.on_message = on_message


if mode == "subscribe":
    subscribed = threading.Event()
    sub = client("gate-sub", False)
    print_payloads(sub)
    sub.on_subscribe = lambda *args: subscribed.set()
    sub.connect("127.0.0.1", port)
    sub.loop_start()
    sub.subscribe("gate/#", qos=1)
    if not subscribed.wait(10):
        sys.exit("no SUBACK")
    say("ready")
    lost.wait(120)
elif mode == "publish":
    count = min(int(sys.argv[3]), 65535)

    def on_publish(_client, _userdata, mid, _reason, _properties):
        # A fresh client numbers its messages 1, 2, ...: message N has packet id N + 1.
        say(f"acked {mid - 1}")

    pub = client("gate-pub", True)
    pub.on_publish = on_publish
    pub.connect("127.0.0.1", port)
    pub.loop_start()
    for n in range(count):
        pub.publish(f"gate/state/{n}", str(n), qos=1)
    lost.wait(120)
elif mode == "resume":
    connected = threading.Event()
    end = threading.Event()
    sub = client("gate-sub", False)
    print_payloads(sub, end)

    def on_connect(_client, _userdata, flags, _reason, _properties):
        say(f"present {int(flags.session_present)}")
        connected.set()

    sub.on_connect = on_connect
    sub.connect("127.0.0.1", port)
    sub.loop_start()
    if not connected.wait(10):
        sys.exit("no CONNACK")
    marker = client("gate-marker", True)
    marker.connect("127.0.0.1", port)
    marker.loop_start()
    marker.publish("gate/end", "end", qos=1).wait_for_publish(10)
    if not end.wait(30):
        sys.exit("gate/end never arrived")
    sub.disconnect()
    marker.disconnect()
else:
    sys.exit(f"unknown mode {mode}")
