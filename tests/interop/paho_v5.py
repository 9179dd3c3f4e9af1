"""paho-mqtt (Python) speaking MQTT 5 to Switchboard: request/response with Response Topic and
Correlation Data, user properties and content type passed through, Subscription Identifiers,
a shared subscription, UNSUBACK reason codes, and a PUBLISH sent right behind two
SUBSCRIBEs.

Usage: python3 paho_v5.py PORT. Prints one line per check and exits 0 on success.
"""
import sys
import threading

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

port = int(sys.argv[1])
WAIT = 5


def client(name):
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=name, protocol=mqtt.MQTTv5)
    c.subacks = {}
    c.suback_event = threading.Event()

    def on_subscribe(cl, userdata, mid, reason_codes, properties):
        cl.subacks[mid] = [rc.value for rc in reason_codes]
        cl.suback_event.set()

    c.on_subscribe = on_subscribe
    connected = threading.Event()
    c.on_connect = lambda *args: connected.set()
    c.connect("127.0.0.1", port, clean_start=True)
    c.loop_start()
    if not connected.wait(WAIT):
        sys.exit(f"{name}: no CONNACK")
    return c


def subscribe(c, topic, options, properties=None):
    c.suback_event.clear()
    _, mid = c.subscribe(topic, options=options, properties=properties)
    if not c.suback_event.wait(WAIT):
        sys.exit(f"no SUBACK for {topic}")
    return c.subacks[mid]


# Request/response between an app and a device, both MQTT 5.
device = client("paho5-device")
app = client("paho5-app")
answered = threading.Event()
request_seen = threading.Event()


def on_device_message(c, userdata, msg):
    p = msg.properties
    users = getattr(p, "UserProperty", [])
    print(f"request {msg.topic} response-topic={p.ResponseTopic} correlation={p.CorrelationData.decode()} "
          f"user={users} content-type={p.ContentType} expiry-ok={0 < p.MessageExpiryInterval <= 60}")
    reply = Properties(PacketTypes.PUBLISH)
    reply.CorrelationData = p.CorrelationData
    c.publish(p.ResponseTopic, b'{"state":"closed"}', qos=1, properties=reply)
    request_seen.set()


def on_app_message(c, userdata, msg):
    p = msg.properties
    print(f"response {msg.topic} {msg.payload.decode()} correlation={p.CorrelationData.decode()} "
          f"subscription-ids={p.SubscriptionIdentifier}")
    answered.set()


device.on_message = on_device_message
app.on_message = on_app_message
print("device suback", subscribe(device, "detrd/status/request/+", SubscribeOptions(qos=1)))
sub_props = Properties(PacketTypes.SUBSCRIBE)
sub_props.SubscriptionIdentifier = 42
print("app suback", subscribe(app, "detrd/status/response/+", SubscribeOptions(qos=1, noLocal=True), sub_props))

request = Properties(PacketTypes.PUBLISH)
request.ResponseTopic = "detrd/status/response/1AB.ENTER.GATE"
request.CorrelationData = b"c-1"
request.UserProperty = ("site", "north")
request.ContentType = "application/json"
request.MessageExpiryInterval = 60
app.publish("detrd/status/request/1AB.ENTER.GATE", b"{}", qos=1, properties=request)
if not request_seen.wait(WAIT) or not answered.wait(WAIT):
    sys.exit("request/response did not complete")

# A shared subscription: two members, four messages, two each (round robin).
counts = {"m1": 0, "m2": 0}
all_in = threading.Event()
lock = threading.Lock()


def member(name):
    def on_message(c, userdata, msg):
        with lock:
            counts[name] += 1
            if sum(counts.values()) == 4:
                all_in.set()
    return on_message


m1 = client("paho5-m1")
m2 = client("paho5-m2")
m1.on_message = member("m1")
m2.on_message = member("m2")
subscribe(m1, "$share/workers/jobs", SubscribeOptions(qos=1))
subscribe(m2, "$share/workers/jobs", SubscribeOptions(qos=1))
for i in range(4):
    app.publish("jobs", f"job-{i}".encode(), qos=1).wait_for_publish(WAIT)
if not all_in.wait(WAIT):
    sys.exit(f"shared subscription delivered {counts}")
print(f"shared m1={counts['m1']} m2={counts['m2']}")

# UNSUBACK reason codes: 0 for a subscription removed, 17 (0x11) for one that never existed.
unsubacks = {}
unsubacked = threading.Event()


def on_unsubscribe(c, userdata, mid, reason_codes, properties):
    unsubacks[mid] = [rc.value for rc in reason_codes]
    unsubacked.set()


app.on_unsubscribe = on_unsubscribe
_, mid = app.unsubscribe(["detrd/status/response/+", "never/subscribed"])
if not unsubacked.wait(WAIT):
    sys.exit("no UNSUBACK")
print("unsuback", unsubacks[mid])

# Two SUBSCRIBEs and a PUBLISH sent back to back, without waiting for the SUBACKs (as the Eclipse
# paho interoperability suite does): the PUBLISH reaches both overlapping subscriptions, as one
# message carrying both Subscription Identifiers.
own = client("paho5-own")
own_got = []
own_in = threading.Event()


def on_own_message(c, userdata, msg):
    own_got.append((msg.topic, sorted(msg.properties.SubscriptionIdentifier)))
    if msg.topic == "own/t/last":
        own_in.set()


own.on_message = on_own_message
for sub_id, own_filter in ((2, "own/t"), (3, "own/t/#")):
    own_props = Properties(PacketTypes.SUBSCRIBE)
    own_props.SubscriptionIdentifier = sub_id
    own.subscribe(own_filter, options=SubscribeOptions(qos=1), properties=own_props)
own.publish("own/t", b"x", qos=1)
# A second message, after which nothing more of the first can come (one publisher's messages
# arrive in order).
own.publish("own/t/last", b"", qos=1)
if not own_in.wait(WAIT):
    sys.exit(f"the PUBLISHes behind the SUBSCRIBEs were not delivered: {own_got}")
print("behind the subscribes", own_got)

for c in (device, app, m1, m2, own):
    c.disconnect()
    c.loop_stop()
