// A fleet of MQTT.js devices across a broker that is killed with SIGKILL and started again on the
// same port (tests/mqttjs_durable.rs does the killing): DEVICES devices, each with a persistent
// MQTT 5 session (Session Expiry Interval 3600) subscribed at QoS 1 to its own command topic
// `fleet/dev-I/cmd`, and an app sending each device PER commands at QoS 1, 200 unacknowledged
// at a time. All of them reconnect on their own at once when the broker is back; the devices
// never subscribe again. Each device must get every one of its commands.
//
// Prints "half" once half the commands are acknowledged (the caller kills the broker then), and
// last one JSON line: the devices that got all their commands, the duplicates, the reconnections
// and how many of them found no session.
//
// usage: node fleet_durable.js PORT [DEVICES=1000] [PER=10]
'use strict';
const mqtt = require('mqtt');
const { finisher } = require('./result');

const [port, devicesArg = '1000', perArg = '10'] = process.argv.slice(2);
const devices = Number(devicesArg);
const per = Number(perArg);
const total = devices * per;
const common = {
  host: '127.0.0.1',
  port: Number(port),
  protocolVersion: 5,
  clean: false,
  reconnectPeriod: 100,
  connectTimeout: 10000,
  resubscribe: false,
  properties: { sessionExpiryInterval: 3600 },
};

const result = { complete: 0, duplicates: 0, reconnects: 0, sessions_missing: 0, reason: null };
const finish = finisher(result, 90000);

const app = mqtt.connect({ ...common, clientId: 'fleet-app' });
app.on('error', () => {});

let acked = 0;
let sent = 0;
// Command `seq` of device `dev` for each n = seq * devices + dev: every device gets its first
// command before any gets its second.
function send() {
  while (sent < total && sent - acked < 200) {
    const n = sent;
    sent += 1;
    const topic = `fleet/dev-${n % devices}/cmd`;
    app.publish(topic, String(Math.floor(n / devices)), { qos: 1 }, (err) => {
      if (err) {
        result.reason = `publish ${n}: ${err.message}`;
        finish(1);
        return;
      }
      acked += 1;
      if (acked === Math.floor(total / 2)) console.log('half');
      send();
    });
  }
}

let subscribed = 0;
for (let i = 0; i < devices; i += 1) {
  const got = new Set();
  const device = mqtt.connect({ ...common, clientId: `fleet-dev-${i}` });
  let first = true;
  device.on('error', () => {});
  device.on('connect', (connack) => {
    if (!first) {
      result.reconnects += 1;
      if (!connack.sessionPresent) result.sessions_missing += 1;
      return;
    }
    first = false;
    device.subscribe(`fleet/dev-${i}/cmd`, { qos: 1 }, (err) => {
      if (err) {
        result.reason = `subscribe ${i}: ${err.message}`;
        finish(1);
        return;
      }
      subscribed += 1;
      if (subscribed === devices) {
        if (app.connected) send();
        else app.once('connect', send);
      }
    });
  });
  device.on('message', (_topic, payload) => {
    const seq = Number(payload.toString());
    if (got.has(seq)) {
      result.duplicates += 1;
      return;
    }
    got.add(seq);
    if (got.size === per) {
      result.complete += 1;
      if (result.complete === devices) finish(0);
    }
  });
}
