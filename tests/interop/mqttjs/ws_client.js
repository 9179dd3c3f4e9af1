// MQTT.js over WebSocket, one role per run. Usage:
//   node ws_client.js URL PROTOCOL_VERSION pub|sub TOPIC COUNT [CA_FILE [CERT_FILE KEY_FILE]]
// pub: publishes COUNT QoS 1 messages (m0, m1, ...) and prints {"published": COUNT} once all are
// acknowledged. sub: subscribes at QoS 1, prints {"ready": true} after the SUBACK, then
// {"received": [...]} once COUNT messages came. Any error prints {"error": ...} and exits 1;
// nothing takes longer than 10 s.
const fs = require('fs');
const mqtt = require('mqtt');

const [url, version, mode, topic, countText, caFile, certFile, keyFile] = process.argv.slice(2);
const count = Number(countText);
const options = {
  clientId: `js-ws-${mode}-${version}-${process.pid}`,
  protocolVersion: Number(version),
  reconnectPeriod: 0,
  connectTimeout: 5000,
};
if (caFile) {
  options.ca = fs.readFileSync(caFile);
  options.rejectUnauthorized = true;
}
if (certFile) {
  // A client certificate for the TLS handshake (wss://).
  options.cert = fs.readFileSync(certFile);
  options.key = fs.readFileSync(keyFile);
}
const say = (line) => console.log(JSON.stringify(line));
const fail = (why) => {
  say({ error: String(why && why.message ? why.message : why) });
  process.exit(1);
};
setTimeout(() => fail('timed out after 10 s'), 10000);

const client = mqtt.connect(url, options);
client.on('error', fail);
client.on('connect', () => {
  if (mode === 'sub') {
    client.subscribe(topic, { qos: 1 }, (err) => (err ? fail(err) : say({ ready: true })));
    return;
  }
  let acknowledged = 0;
  for (let i = 0; i < count; i += 1) {
    client.publish(topic, `m${i}`, { qos: 1 }, (err) => {
      if (err) fail(err);
      acknowledged += 1;
      if (acknowledged === count) {
        say({ published: count });
        client.end(false, () => process.exit(0));
      }
    });
  }
});
const received = [];
client.on('message', (_topic, payload) => {
  received.push(payload.toString());
  if (received.length === count) {
    say({ received });
    client.end(false, () => process.exit(0));
  }
});
