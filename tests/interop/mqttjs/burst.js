// A burst through the broker with MQTT.js, as a new user would try it: one subscriber on `js/#` at
// QoS 2, one publisher sending COUNT QoS 1 messages BATCH at a time (each batch waits for its
// PUBACKs). Prints one JSON line: what the subscriber got, whether it lost its connection, and
// the time from the publisher's CONNACK to the last message (when all arrived).
//
// usage: node burst.js PORT [PROTOCOL_VERSION=4] [COUNT=3000] [BATCH=100]
'use strict';
const mqtt = require('mqtt');
const { finisher } = require('./result');

const [port, version = '4', count = '3000', batch = '100'] = process.argv.slice(2);
const total = Number(count);
const perBatch = Number(batch);
const common = {
  host: '127.0.0.1',
  port: Number(port),
  protocolVersion: Number(version),
  reconnectPeriod: 0,
  connectTimeout: 5000,
};

const result = {
  received: 0, duplicates: 0, out_of_order: 0, subscriber_closed: false, reason: null, elapsed_ms: null,
};
let started = null;
const seen = new Set();
let last = -1;
const finish = finisher(result, 60000);

const sub = mqtt.connect({ ...common, clientId: `js-sub-${process.pid}`, clean: true });
sub.on('error', (e) => { result.reason = `subscriber error: ${e.message}`; });
sub.on('disconnect', (packet) => { result.reason = `server DISCONNECT 0x${(packet.reasonCode || 0).toString(16)}`; });
sub.on('close', () => {
  if (result.received === total) { finish(0); return; }
  result.subscriber_closed = true;
  finish(1);
});
sub.on('message', (topic, payload) => {
  const n = Number(payload.toString());
  if (seen.has(n)) { result.duplicates += 1; return; }
  seen.add(n);
  if (n < last) result.out_of_order += 1;
  last = n;
  result.received += 1;
  if (result.received === total) {
    result.elapsed_ms = Date.now() - started;
    sub.end(false, () => finish(0));
  }
});

sub.on('connect', () => {
  sub.subscribe('js/#', { qos: 2 }, (err) => {
    if (err) { result.reason = `subscribe: ${err.message}`; finish(1); return; }
    const pub = mqtt.connect({ ...common, clientId: `js-pub-${process.pid}`, clean: true });
    pub.on('error', (e) => { result.reason = `publisher error: ${e.message}`; finish(1); });
    pub.on('connect', async () => {
      started = Date.now();
      const publish = (n) => new Promise((resolve, reject) =>
        pub.publish(`js/burst/${n % 10}`, String(n), { qos: 1 }, (e) => (e ? reject(e) : resolve())));
      try {
        for (let first = 0; first < total; first += perBatch) {
          const batchOf = [];
          for (let n = first; n < Math.min(first + perBatch, total); n += 1) batchOf.push(publish(n));
          await Promise.all(batchOf);
        }
      } catch (e) {
        result.reason = `publish: ${e.message}`;
        finish(1);
        return;
      }
      pub.end();
    });
  });
});
