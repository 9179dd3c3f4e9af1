"""amqtt (Python asyncio, MQTT 3.1.1 with protocol code of its own) against Switchboard: QoS 0/1/2
publish and subscribe, a retained message for a later subscriber, and a persistent session that
gets what was published while it was away.

Usage: python3 amqtt_roundtrip.py URL TAG, URL mqtt://HOST:PORT/ or ws://HOST:PORT/PATH; every
client id and topic starts with TAG. Prints one line per received message (topic, payload, QoS,
RETAIN) and exits 0 on success.
"""
import asyncio
import sys

from amqtt.client import MQTTClient
from amqtt.mqtt.constants import QOS_0, QOS_1, QOS_2

URL, TAG = sys.argv[1], sys.argv[2]
WAIT = 5


def client(name):
    return MQTTClient(client_id=f"{TAG}-{name}", config={"auto_reconnect": False})


async def next_line(c):
    message = await asyncio.wait_for(c.deliver_message(), WAIT)
    packet = message.publish_packet
    topic = packet.variable_header.topic_name
    return f"{topic} {packet.payload.data.decode()} {packet.qos} {int(packet.retain_flag)}"


async def main():
    sub = client("sub")
    await sub.connect(URL)
    await sub.subscribe([(f"{TAG}/detrd/status/response/+", QOS_2), (f"{TAG}/gate/#", QOS_1)])
    app = client("app")
    await app.connect(URL)
    for qos in (QOS_0, QOS_1, QOS_2):
        await app.publish(f"{TAG}/detrd/status/response/q{qos}", f"payload-{qos}".encode(), qos=qos)
    await app.publish(f"{TAG}/gate/1AB/state", b"closed", qos=QOS_1, retain=True)
    for _ in range(4):
        print(await next_line(sub))
    await sub.disconnect()

    late = client("late")
    await late.connect(URL)
    await late.subscribe([(f"{TAG}/gate/#", QOS_1)])
    print(await next_line(late))
    await late.disconnect()

    device = client("device")
    await device.connect(URL, cleansession=False)
    await device.subscribe([(f"{TAG}/detrd/status/request/dev1", QOS_1)])
    await device.disconnect()
    for n in range(3):
        await app.publish(f"{TAG}/detrd/status/request/dev1", f"ask-{n}".encode(), qos=QOS_1)
    device = client("device")
    await device.connect(URL, cleansession=False)
    for _ in range(3):
        print(await next_line(device))
    await device.disconnect()
    await app.disconnect()


asyncio.run(main())
