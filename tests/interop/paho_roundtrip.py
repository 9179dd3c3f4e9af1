"""paho-mqtt (Python) against Switchboard: subscribe, publish at QoS 0/1/2, receive, retained.

Usage: python3 paho_roundtrip.py PORT. Prints one line per received message and exits 0 on success.
"""
import sys
import threading

import paho.mqtt.client as mqtt

port = int(sys.argv[1])
got = []
done = threading.Event()
subscribed = threading.Event()


def on_message(client, userdata, msg):
    got.append((msg.topic, msg.payload.decode(), msg.qos, int(msg.retain)))
    if len(got) == 4:
        done.set()


sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="paho-sub", protocol=mqtt.MQTTv311)
sub.on_message = on_message
sub.on_subscribe = lambda *args: subscribed.set()
sub.connect("127.0.0.1", port)
sub.loop_start()
sub.subscribe("detrd/status/#", qos=2)
if not subscribed.wait(5):
    sys.exit("no SUBACK")

pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="paho-pub", protocol=mqtt.MQTTv311)
pub.connect("127.0.0.1", port)
pub.loop_start()
for qos in (0, 1, 2):
    pub.publish(f"detrd/status/response/q{qos}", f"payload-{qos}", qos=qos).wait_for_publish(5)
pub.publish("detrd/status/retained", "kept", qos=1, retain=True).wait_for_publish(5)
if not done.wait(5):
    sys.exit(f"received only {got}")

late = []
late_done = threading.Event()
late_client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="paho-late", protocol=mqtt.MQTTv311)


def on_late(client, userdata, msg):
    late.append((msg.topic, msg.payload.decode(), int(msg.retain)))
    late_done.set()


late_client.on_message = on_late
late_client.connect("127.0.0.1", port)
late_client.loop_start()
late_client.subscribe("detrd/status/retained", qos=1)
if not late_done.wait(5):
    sys.exit("retained message not delivered")
for client in (sub, pub, late_client):
    client.disconnect()
    client.loop_stop()
for line in sorted(got) + late:
    print(*line)
