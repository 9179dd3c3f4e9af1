// A device fleet's two MQTT.js clients across a broker that is killed with SIGKILL and started
// again on the same port (tests/mqttjs_durable.rs does the killing): a device subscribed to
// `js/gate/#` at QOS (1 or 2) with a persistent session (clean session 0; on MQTT 5 also a
// Session Expiry Interval), and an app publishing COUNT messages at QOS to `js/gate/1AB/state`,
// WINDOW unacknowledged at a time. Both reconnect on their own, as MQTT.js does by default; the
// device never subscribes again (`resubscribe: false`): what it gets after the restart comes
// from the session the broker kept.
// MQTT.js sends its unacknowledged messages again on reconnecting, so every message is
// acknowledged in the end and the device must get every one.
//
// Prints "acked N" after each PUBACK (PUBCOMP at QoS 2; N: how many so far), "connected device|app present 0|1"
// at each CONNACK, and last one JSON line: what the device got and how often each client
// reconnected.
//
// usage: node durable.js PORT [PROTOCOL_VERSION=4] [COUNT=3000] [WINDOW=50] [QOS=1]
'use strict';
const mqtt = require('mqtt');
const { finisher } = require('./result');

const [port, version = '4', count = '3000', window = '50', qosArg = '1'] = process.argv.slice(2);
const qos = Number(qosArg);
const total = Number(count);
const inFlight = Number(window);
const v5 = Number(version) === 5;
const common = {
  host: '127.0.0.1',
  port: Number(port),
  protocolVersion: Number(version),
  clean: false,
  reconnectPeriod: 100,
  connectTimeout: 5000,
  resubscribe: false,
  ...(v5 ? { properties: { sessionExpiryInterval: 3600 } } : {}),
};

const result = {
  received: 0, distinct: 0, duplicates: 0, out_of_order: 0, device_connects: 0, app_connects: 0,
  device_sessions_present: [], reason: null,
};
const seen = new Set();
let last = -1;
let acked = 0;
let sent = 0;
const finish = finisher(result, 60000, () => {
  // Where each client stood at the end: what a stalled stream is read from.
  result.acked = acked;
  result.sent = sent;
  result.app_unacknowledged = Object.keys(app.outgoing).map(Number);
  result.app_queued = app._storeProcessingQueue ? app._storeProcessingQueue.length : null;
  result.device_incoming_qos2 = device._incomingQoS2Ids ? [...device._incomingQoS2Ids] : null;
  result.app_last_packets = appPackets.slice();
  result.device_last_packets = devicePackets.slice();
});

const device = mqtt.connect({ ...common, clientId: 'js-gate-device' });
const app = mqtt.connect({ ...common, clientId: 'js-gate-app' });
// The last packets each client sent (>) and received (<), for a result that ends early.
const appPackets = [];
const devicePackets = [];
function record(list, way, packet) {
  const id = packet.messageId === undefined ? '' : ` ${packet.messageId}`;
  const dup = packet.dup ? ' dup' : '';
  list.push(`${way}${packet.cmd}${id}${dup}`);
  if (list.length > 40) list.shift();
}
app.on('packetsend', (p) => record(appPackets, '>', p));
app.on('packetreceive', (p) => record(appPackets, '<', p));
device.on('packetsend', (p) => record(devicePackets, '>', p));
device.on('packetreceive', (p) => record(devicePackets, '<', p));
device.on('error', (e) => { result.reason = `device error: ${e.message}`; });
app.on('error', (e) => { result.reason = `app error: ${e.message}`; });

device.on('message', (_topic, payload) => {
  const n = Number(payload.toString());
  result.received += 1;
  if (seen.has(n)) {
    result.duplicates += 1;
  } else {
    seen.add(n);
    result.distinct = seen.size;
    if (n < last) result.out_of_order += 1;
    last = Math.max(last, n);
  }
  if (seen.size === total) finish(0);
});

// Sends the next message while fewer than WINDOW wait for their PUBACK. MQTT.js keeps each one
// until it is acknowledged and sends it again after a reconnect.
function fill() {
  while (sent < total && sent - acked < inFlight) {
    const n = sent;
    sent += 1;
    app.publish('js/gate/1AB/state', String(n), { qos }, (err) => {
      if (err) {
        // The broker refused it (a reason code of 0x80 or above), or the client ended.
        result.reason = `publish ${n}: ${err.message}`;
        finish(1);
        return;
      }
      acked += 1;
      console.log(`acked ${acked}`);
      fill();
    });
  }
}

device.on('connect', (connack) => {
  result.device_connects += 1;
  result.device_sessions_present.push(connack.sessionPresent);
  console.log(`connected device present ${connack.sessionPresent ? 1 : 0}`);
  if (result.device_connects > 1) return;
  device.subscribe('js/gate/#', { qos }, (err) => {
    if (err) {
      result.reason = `subscribe: ${err.message}`;
      finish(1);
      return;
    }
    if (app.connected) fill();
    else app.once('connect', fill);
  });
});

app.on('connect', (connack) => {
  result.app_connects += 1;
  console.log(`connected app present ${connack.sessionPresent ? 1 : 0}`);
});
