// MQTT.js (MQTT 5) publishing where nobody listens, as an app asking a gate that is not there:
// the PUBACK's reason code 0x10 No matching subscribers must reach the app as a success with
// that code, and a QoS 2 flow must complete after a PUBREC with it. Prints one JSON line.
//
// usage: node no_subscribers.js PORT
'use strict';
const mqtt = require('mqtt');
const { finisher } = require('./result');

const [port] = process.argv.slice(2);
const result = { qos1: null, qos2: null, listened: null, reason: null };

const finish = finisher(result, 20000);

// The reason code of each PUBACK/PUBREC by packet id (the publish callback gets the PUBLISH
// back, not the acknowledgement).
const acks = new Map();

// What a publish's callback got: its error's message (null for none), and the reason code of
// the PUBACK (QoS 1) or PUBREC (QoS 2) that answered it.
function outcome(err, packet) {
  const id = packet ? packet.messageId : undefined;
  return { error: err ? err.message : null, reason_code: acks.has(id) ? acks.get(id) : null };
}

const client = mqtt.connect({
  host: '127.0.0.1',
  port: Number(port),
  protocolVersion: 5,
  clientId: `js-app-${process.pid}`,
  reconnectPeriod: 0,
  connectTimeout: 5000,
});
client.on('error', (e) => { result.reason = `error: ${e.message}`; finish(1); });
client.on('packetreceive', (packet) => {
  if (packet.cmd === 'puback' || packet.cmd === 'pubrec') acks.set(packet.messageId, packet.reasonCode || 0);
});
client.on('connect', () => {
  client.publish('detrd/status/request/2CD', 'status?', { qos: 1 }, (err1, ack1) => {
    result.qos1 = outcome(err1, ack1);
    client.publish('detrd/status/request/2CD', 'status?', { qos: 2 }, (err2, ack2) => {
      result.qos2 = outcome(err2, ack2);
      client.subscribe('detrd/status/request/1AB', { qos: 1 }, (subErr) => {
        if (subErr) { result.reason = `subscribe: ${subErr.message}`; finish(1); return; }
        client.publish('detrd/status/request/1AB', 'status?', { qos: 1 }, (err3, ack3) => {
          result.listened = outcome(err3, ack3);
          // Not `end()`: the client's own message is on its way back to it, and acknowledging
          // it after `end()` is an error of MQTT.js's.
          finish(0);
        });
      });
    });
  });
});
