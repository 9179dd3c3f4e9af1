// MQTT.js over MQTT 3.1.1 with a persistent session, as a device that queues: one QoS 1 and
// one QoS 2 message larger than the broker's maximum packet size, then a small one. 3.1.1 has
// no way to refuse them; each callback must come back without an error and without a
// reconnect (a closed connection would have MQTT.js send the large ones again after every
// reconnect, and the small one would wait behind them forever). Prints one JSON line.
//
// usage: node too_large.js PORT SIZE
'use strict';
const mqtt = require('mqtt');
const { finisher } = require('./result');

const [port, size] = process.argv.slice(2);
const result = { connects: 0, closes: 0, large_qos1: null, large_qos2: null, small: null, reason: null };

const finish = finisher(result, 20000);

const client = mqtt.connect({
  host: '127.0.0.1',
  port: Number(port),
  protocolVersion: 4,
  clean: false,
  clientId: `js-camera-${process.pid}`,
  reconnectPeriod: 100,
  connectTimeout: 5000,
});
client.on('error', (e) => { result.reason = `error: ${e.message}`; finish(1); });
client.on('close', () => { result.closes += 1; });
client.on('connect', () => {
  result.connects += 1;
  if (result.connects > 1) return;
  const large = Buffer.alloc(Number(size), 0x61);
  client.publish('cam/1/photo', large, { qos: 1 }, (err1) => {
    result.large_qos1 = err1 ? err1.message : 'acknowledged';
    client.publish('cam/1/photo', large, { qos: 2 }, (err2) => {
      result.large_qos2 = err2 ? err2.message : 'acknowledged';
      client.publish('cam/1/state', 'small', { qos: 1 }, (err3) => {
        result.small = err3 ? err3.message : 'acknowledged';
        finish(0);
      });
    });
  });
});
