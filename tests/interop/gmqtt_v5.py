#!/usr/bin/env python3
"""gmqtt (PyPI), an asyncio MQTT 5 client with its own protocol code, against a broker on
127.0.0.1:PORT: MQTT 5 features through a stack that is neither paho's nor MQTT.js's.

    gmqtt_v5.py PORT   runs each scenario, printing one JSON line per scenario:
                       {"name": ..., "ok": true|false, "detail": ...}

Every wait is bounded (asyncio.wait_for); clients never reconnect.
"""

import asyncio
import json
import sys

from gmqtt import Client, Subscription
from gmqtt.mqtt.constants import MQTTv50

PORT = int(sys.argv[1])
WAIT = 10.0


class Failed(Exception):
    pass


class Inbox:
    """The messages a client gets, in arrival order: (topic, payload, qos, properties)."""

    def __init__(self):
        self.queue = asyncio.Queue()

    def on_message(self, _client, topic, payload, qos, properties):
        self.queue.put_nowait((topic, bytes(payload), qos, properties))
        return 0

    async def next(self, waiting_for):
        try:
            return await asyncio.wait_for(self.queue.get(), WAIT)
        except asyncio.TimeoutError:
            raise Failed(f"no message within {WAIT} s, waiting for {waiting_for}") from None


async def connect(client_id, **kwargs):
    """A connected MQTT 5 client that does not reconnect, and its inbox."""
    client = Client(client_id, **kwargs)
    client.set_config({"reconnect_retries": 0, "reconnect_delay": 0})
    inbox = Inbox()
    client.on_message = inbox.on_message
    subscribed = asyncio.Queue()
    client.on_subscribe = lambda _c, mid, qos, props: subscribed.put_nowait((mid, qos))
    client.subscribed = subscribed
    await asyncio.wait_for(client.connect("127.0.0.1", PORT, version=MQTTv50), WAIT)
    return client, inbox


async def subscribe(client, *subscriptions, **kwargs):
    """Subscribes and waits for the SUBACK; its granted QoS (or reason codes)."""
    client.subscribe(list(subscriptions), **kwargs)
    try:
        _mid, granted = await asyncio.wait_for(client.subscribed.get(), WAIT)
    except asyncio.TimeoutError:
        raise Failed("no SUBACK") from None
    if any(code >= 0x80 for code in granted):
        raise Failed(f"subscription refused: {granted}")
    return granted


def expect(message, topic, payload):
    got_topic, got_payload = message[0], message[1]
    if got_topic != topic or got_payload != payload:
        raise Failed(f"got {got_topic} {got_payload!r}, expected {topic} {payload!r}")


async def request_response():
    """The seed's pattern on MQTT 5: the app's requests carry a Response Topic and Correlation
    Data; the device answers on that topic with the same data; 50 round trips in turn."""
    device, device_inbox = await connect("gm-radar")
    app, app_inbox = await connect("gm-app")
    try:
        await subscribe(device, Subscription("detrd/status/request/+", qos=1))
        await subscribe(app, Subscription("detrd/status/response/gm-app", qos=1))
        for i in range(50):
            app.publish("detrd/status/request/gm-radar", f"status?{i}", qos=1,
                        response_topic="detrd/status/response/gm-app",
                        correlation_data=f"req-{i}".encode())
            _topic, payload, _qos, props = await device_inbox.next(f"request {i}")
            if payload != f"status?{i}".encode():
                raise Failed(f"request {i} is {payload!r}")
            reply_to = props.get("response_topic", [None])[0]
            correlation = props.get("correlation_data", [None])[0]
            if reply_to != "detrd/status/response/gm-app" or correlation != f"req-{i}".encode():
                raise Failed(f"request {i} came with {reply_to!r}, {correlation!r}")
            device.publish(reply_to, f"ok {i}", qos=1, correlation_data=correlation)
            topic, payload, _qos, props = await app_inbox.next(f"answer {i}")
            expect((topic, payload), "detrd/status/response/gm-app", f"ok {i}".encode())
            if props.get("correlation_data", [None])[0] != f"req-{i}".encode():
                raise Failed(f"answer {i} lost its correlation data: {props}")
    finally:
        await device.disconnect()
        await app.disconnect()


async def subscription_identifiers():
    """Two overlapping subscriptions with identifiers: the message arrives once, at the higher
    QoS, carrying both identifiers."""
    sub, inbox = await connect("gm-sid")
    pub, _ = await connect("gm-sid-pub")
    try:
        await subscribe(sub, Subscription("gm/sid/+", qos=0), subscription_identifier=7)
        await subscribe(sub, Subscription("gm/sid/#", qos=1), subscription_identifier=9)
        pub.publish("gm/sid/a", "both", qos=1)
        pub.publish("gm/sid/end", "end", qos=1)
        topic, payload, qos, props = await inbox.next("the message")
        expect((topic, payload), "gm/sid/a", b"both")
        ids = sorted(props.get("subscription_identifier", []))
        if ids != [7, 9] or qos != 1:
            raise Failed(f"identifiers {ids}, QoS {qos}; expected [7, 9] at QoS 1")
        topic, payload, _qos, _props = await inbox.next("the end marker")
        expect((topic, payload), "gm/sid/end", b"end")
    finally:
        await sub.disconnect()
        await pub.disconnect()


async def no_local_and_retain_handling():
    """No Local keeps a client's own messages from it; Retain Handling 2 sends no retained
    message on subscribing: in both cases the next message is a marker sent after."""
    client, inbox = await connect("gm-nolocal")
    other, _ = await connect("gm-nolocal-other")
    try:
        other.publish("gm/rh/gate", "closed", qos=1, retain=True)
        await subscribe(client, Subscription("gm/own", qos=1, no_local=True))
        await subscribe(client, Subscription("gm/rh/#", qos=1, retain_handling_options=2))
        client.publish("gm/own", "mine", qos=1)
        other.publish("gm/own", "theirs", qos=1)
        expect(await inbox.next("the other client's message"), "gm/own", b"theirs")
        other.publish("gm/rh/marker", "after", qos=1)
        expect(await inbox.next("the marker"), "gm/rh/marker", b"after")
    finally:
        other.publish("gm/rh/gate", "", qos=1, retain=True)
        await client.disconnect()
        await other.disconnect()


async def properties_pass_through():
    """User Properties (in order), Content Type and Payload Format Indicator reach the
    subscriber unchanged; a Message Expiry Interval arrives no larger than sent."""
    sub, inbox = await connect("gm-props")
    pub, _ = await connect("gm-props-pub")
    try:
        await subscribe(sub, Subscription("gm/props", qos=1))
        user = [("site", "1AB"), ("kind", "radar"), ("site", "2CD")]
        pub.publish("gm/props", '{"state":"ok"}', qos=1, user_property=user,
                    content_type="application/json", payload_format_id=1,
                    message_expiry_interval=60)
        _topic, payload, _qos, props = await inbox.next("the message")
        if payload != b'{"state":"ok"}':
            raise Failed(f"payload {payload!r}")
        got_user = [tuple(p) for p in props.get("user_property", [])]
        if got_user != user:
            raise Failed(f"user properties {got_user}, expected {user}")
        if props.get("content_type", [None])[0] != "application/json":
            raise Failed(f"content type {props.get('content_type')}")
        if props.get("payload_format_id", [None])[0] != 1:
            raise Failed(f"payload format {props.get('payload_format_id')}")
        expiry = props.get("message_expiry_interval", [None])[0]
        if expiry is None or not 0 < expiry <= 60:
            raise Failed(f"message expiry interval {expiry}")
    finally:
        await sub.disconnect()
        await pub.disconnect()


async def topic_aliases():
    """A publisher that names its topic once and then sends only its alias: each message
    (each waited for, as a device publishes) reaches the subscriber under the full topic, in
    order, also through the aliases the broker may send a subscriber that allows them."""
    sub, inbox = await connect("gm-alias", topic_alias_maximum=10)
    pub, _ = await connect("gm-alias-pub")
    try:
        await subscribe(sub, Subscription("gm/alias/#", qos=1))
        for i in range(20):
            topic = "gm/alias/radar" if i == 0 else ""
            pub.publish(topic, f"m{i}", qos=1, topic_alias=3)
            expect(await inbox.next(f"m{i}"), "gm/alias/radar", f"m{i}".encode())
    finally:
        await sub.disconnect()
        await pub.disconnect()


SCENARIOS = [
    ("request_response", request_response),
    ("subscription_identifiers", subscription_identifiers),
    ("no_local_and_retain_handling", no_local_and_retain_handling),
    ("properties_pass_through", properties_pass_through),
    ("topic_aliases", topic_aliases),
]


async def main():
    for name, scenario in SCENARIOS:
        try:
            await asyncio.wait_for(scenario(), 4 * WAIT)
            result = {"name": name, "ok": True, "detail": ""}
        except Exception as e:  # every failure is a result line, not a crash
            result = {"name": name, "ok": False, "detail": f"{type(e).__name__}: {e}"}
        print(json.dumps(result), flush=True)


asyncio.run(main())
