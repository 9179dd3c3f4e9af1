"""paho-mqtt (Python) over WebSocket: a subscriber and a publisher, both with
transport="websockets", round-trip QoS 0, 1 and 2 over MQTT 3.1.1 and MQTT 5.

Usage: python3 paho_ws.py PORT PATH. Prints one line per received message
(`version topic payload qos`) and exits 0 on success.
"""
import sys
import threading

import paho.mqtt.client as mqtt

port = int(sys.argv[1])
path = sys.argv[2]


def client(client_id, protocol):
    c = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=protocol,
        transport="websockets",
    )
    c.ws_set_options(path=path)
    return c


for name, protocol in (("3.1.1", mqtt.MQTTv311), ("5", mqtt.MQTTv5)):
    got = []
    done = threading.Event()
    subscribed = threading.Event()

    def on_message(_client, _userdata, msg, got=got, done=done):
        got.append((msg.topic, msg.payload.decode(), msg.qos))
        if len(got) == 3:
            done.set()

    sub = client(f"paho-ws-sub-{name}", protocol)
    sub.on_message = on_message
    sub.on_subscribe = lambda *args, subscribed=subscribed: subscribed.set()
    sub.connect("127.0.0.1", port)
    sub.loop_start()
    sub.subscribe("paho/ws/#", qos=2)
    if not subscribed.wait(5):
        sys.exit(f"{name}: no SUBACK")
    pub = client(f"paho-ws-pub-{name}", protocol)
    pub.connect("127.0.0.1", port)
    pub.loop_start()
    for qos in (0, 1, 2):
        pub.publish(f"paho/ws/q{qos}", f"{name}-{qos}", qos=qos).wait_for_publish(5)
    if not done.wait(5):
        sys.exit(f"{name}: received only {got}")
    for topic, payload, qos in sorted(got):
        print(name, topic, payload, qos)
    pub.disconnect()
    sub.disconnect()
    pub.loop_stop()
    sub.loop_stop()
