// MQTT.js (MQTT 5) using what MQTT 5 adds, against the broker: topic aliases both ways,
// subscription identifiers on overlapping subscriptions, message properties, No Local, Retain
// Handling, the seed's request/response with Response Topic and Correlation Data, a shared
// subscription, the client's Maximum Packet Size, UNSUBACK reason codes and a session resumed
// by a new client object. It records what MQTT.js saw and prints one JSON line; tests/mqttjs.rs
// checks it. Every wait is for an event (a message, an acknowledgement), under one deadline.
// Over TCP to PORT, or with URL (`ws://127.0.0.1:PORT/mqtt`) over WebSocket, as a browser.
//
// usage: node v5_features.js PORT [URL]
'use strict';
const mqtt = require('mqtt');
const { finisher } = require('./result');

const [port, url] = process.argv.slice(2);
// Where every client connects: the WebSocket URL, or the TCP port.
const server = url ? {} : { host: '127.0.0.1', port: Number(port) };
const result = { reason: null };
const finish = finisher(result, 30000);
const tag = `${process.pid}`;

// Connects an MQTT 5 client with `options`; resolves with [client, connack].
function connect(clientId, options = {}) {
  return new Promise((resolve, reject) => {
    const client = mqtt.connect(url, Object.assign({}, server, {
      protocolVersion: 5,
      clientId: `${clientId}-${tag}`,
      reconnectPeriod: 0,
      connectTimeout: 5000,
    }, options));
    client.once('connect', (connack) => resolve([client, connack]));
    client.once('error', reject);
  });
}

// Promisified subscribe and publish (the publish resolves on its PUBACK).
const subscribe = (client, filters, options = {}) => new Promise((resolve, reject) =>
  client.subscribe(filters, options, (e, granted) => (e ? reject(e) : resolve(granted))));
const publish = (client, topic, payload, options = {}) => new Promise((resolve, reject) =>
  client.publish(topic, payload, Object.assign({ qos: 1 }, options), (e) => (e ? reject(e) : resolve())));

// Collects the messages `client` receives on topics `accept` picks; `until(n)` resolves once n
// have come.
function collector(client, accept) {
  const got = [];
  let waiting = null;
  client.on('message', (topic, payload, packet) => {
    if (!accept(topic)) return;
    got.push({ topic, payload: payload.toString(), retain: packet.retain, qos: packet.qos,
      properties: packet.properties || {} });
    if (waiting && got.length >= waiting.n) { const w = waiting; waiting = null; w.resolve(); }
  });
  got.until = (n) => new Promise((resolve) => {
    if (got.length >= n) resolve(); else waiting = { n, resolve };
  });
  return got;
}

async function main() {
  // Topic aliases both ways, subscription identifiers, properties.
  const [sub] = await connect('sub', { properties: { topicAliasMaximum: 5 } });
  const aliasesIn = [];
  sub.on('packetreceive', (p) => {
    if (p.cmd === 'publish') aliasesIn.push({ topic: p.topic, alias: (p.properties || {}).topicAlias || 0 });
  });
  const fleet = collector(sub, (t) => t.startsWith('fleet/1AB/'));
  await subscribe(sub, { 'fleet/+/state': { qos: 1 } }, { properties: { subscriptionIdentifier: 7 } });
  await subscribe(sub, { 'fleet/#': { qos: 2 } }, { properties: { subscriptionIdentifier: 9 } });
  const [pub, pubAck] = await connect('pub', { autoAssignTopicAlias: true });
  const aliasesOut = [];
  pub.on('packetsend', (p) => {
    if (p.cmd === 'publish') aliasesOut.push({ topic: p.topic, alias: (p.properties || {}).topicAlias || 0 });
  });
  for (let seq = 0; seq < 5; seq++) {
    await publish(pub, 'fleet/1AB/state', `state-${seq}`, { properties: {
      contentType: 'application/json',
      payloadFormatIndicator: true,
      responseTopic: 'detrd/status/response/1AB',
      correlationData: Buffer.from(`corr-${seq}`),
      userProperties: { site: 'north', seq: `${seq}` },
      messageExpiryInterval: 600,
    } });
  }
  await fleet.until(5);
  result.server_alias_maximum = (pubAck.properties || {}).topicAliasMaximum || 0;
  result.client_aliased = aliasesOut.filter((p) => p.topic === '' && p.alias > 0).length;
  result.broker_aliased = aliasesIn.filter((p) => p.topic === '' && p.alias > 0).length;
  result.broker_alias_max = Math.max(0, ...aliasesIn.map((p) => p.alias));
  result.fleet = fleet.map((m) => ({
    topic: m.topic,
    payload: m.payload,
    qos: m.qos,
    subscription_ids: [].concat(m.properties.subscriptionIdentifier || []).sort((a, b) => a - b),
    content_type: m.properties.contentType,
    payload_format: m.properties.payloadFormatIndicator,
    response_topic: m.properties.responseTopic,
    correlation: m.properties.correlationData ? m.properties.correlationData.toString() : null,
    user: m.properties.userProperties || null,
    expiry: m.properties.messageExpiryInterval,
  }));

  // No Local: the publisher's own message does not come back to it; another client's does.
  const own = collector(pub, (t) => t === 'fleet/2CD/cmd');
  await subscribe(pub, { 'fleet/2CD/cmd': { qos: 1, nl: true } });
  const seenBySub = collector(sub, (t) => t === 'fleet/2CD/cmd');
  await publish(pub, 'fleet/2CD/cmd', 'own');
  await seenBySub.until(1);
  await publish(sub, 'fleet/2CD/cmd', 'from-another-client');
  await own.until(1);
  result.no_local = own.map((m) => m.payload);

  // Retain Handling: 2 never, 1 only for a new subscription, 0 at every subscribe; a live
  // retained message to a Retain As Published 0 subscription arrives with RETAIN 0.
  await publish(pub, 'fleet/3EF/state', 'closed', { retain: true });
  const [late] = await connect('late');
  const lateGot = collector(late, () => true);
  const mark = `mark/${tag}`;
  const marks = () => lateGot.filter((m) => m.topic === mark).length;
  await subscribe(late, { [mark]: { qos: 1 } });
  // Everything the broker sent `late` before this round trip has arrived once it returns.
  const barrier = async () => {
    const target = marks() + 1;
    await publish(late, mark, 'mark');
    while (marks() < target) await lateGot.until(lateGot.length + 1);
  };
  const retainedAt = async (filter, rh) => {
    const from = lateGot.length;
    await subscribe(late, { [filter]: { qos: 1, rh } });
    await barrier();
    return lateGot.slice(from).filter((m) => m.topic === 'fleet/3EF/state')
      .map((m) => ({ payload: m.payload, retain: m.retain }));
  };
  result.retain_handling = {
    never: await retainedAt('fleet/3EF/state', 2),
    new_subscription: await retainedAt('fleet/3EF/#', 1),
    existing_subscription: await retainedAt('fleet/3EF/#', 1),
    every_subscribe: await retainedAt('fleet/3EF/state', 0),
  };
  const live = lateGot.length;
  await publish(pub, 'fleet/3EF/state', 'open', { retain: true });
  await lateGot.until(live + 1);
  result.live_retained = lateGot.slice(live).map((m) => ({ payload: m.payload, retain: m.retain }));

  // Request/response as the seed's app and gate do it, in MQTT 5's own terms.
  const [gate] = await connect('gate-1AB');
  gate.on('message', (topic, payload, packet) => {
    const p = packet.properties || {};
    gate.publish(p.responseTopic, `{"gate":"1AB","state":"closed","asked":"${payload}"}`,
      { qos: 1, properties: { correlationData: p.correlationData } });
  });
  await subscribe(gate, { 'detrd/status/request/1AB': { qos: 1 } });
  const [app] = await connect('app');
  const answers = collector(app, (t) => t === 'detrd/status/response/1AB');
  await subscribe(app, { 'detrd/status/response/1AB': { qos: 1 } });
  await publish(app, 'detrd/status/request/1AB', 'status?', { properties: {
    responseTopic: 'detrd/status/response/1AB', correlationData: Buffer.from('req-42'),
  } });
  await answers.until(1);
  result.answer = {
    payload: answers[0].payload,
    correlation: answers[0].properties.correlationData
      ? answers[0].properties.correlationData.toString() : null,
  };

  // A shared subscription: each message to one member of the group.
  const [m1] = await connect('member-1');
  const [m2] = await connect('member-2');
  const shared = [];
  let sharedDone = null;
  const onShared = (member) => (topic, payload) => {
    shared.push({ member, payload: payload.toString() });
    if (new Set(shared.map((s) => s.payload)).size >= 20 && sharedDone) sharedDone();
  };
  m1.on('message', onShared(1));
  m2.on('message', onShared(2));
  await subscribe(m1, { '$share/gates/telemetry/+': { qos: 1 } });
  await subscribe(m2, { '$share/gates/telemetry/+': { qos: 1 } });
  const allShared = new Promise((resolve) => { sharedDone = resolve; });
  for (let i = 0; i < 20; i++) await publish(pub, `telemetry/${i % 4}`, `t-${i}`);
  await allShared;
  result.shared = {
    deliveries: shared.length,
    distinct: new Set(shared.map((s) => s.payload)).size,
    member_1: shared.filter((s) => s.member === 1).length,
    member_2: shared.filter((s) => s.member === 2).length,
  };

  // The client's Maximum Packet Size: what is larger is not sent to it; what follows is.
  const [small] = await connect('small', { properties: { maximumPacketSize: 128 } });
  const smallGot = collector(small, () => true);
  await subscribe(small, { 'big/#': { qos: 1 } });
  await publish(pub, 'big/1', Buffer.alloc(300, 0x61));
  await publish(pub, 'big/2', 'fits');
  await smallGot.until(1);
  result.max_packet = smallGot.map((m) => m.topic);

  // UNSUBACK reason codes: 0x00 for a subscription removed, 0x11 for none.
  const unsuback = new Promise((resolve) => sub.on('packetreceive', (p) => {
    if (p.cmd === 'unsuback') resolve(p.reasonCode !== undefined ? p.reasonCode : p.granted);
  }));
  sub.unsubscribe(['fleet/+/state', 'never/subscribed']);
  result.unsuback = await unsuback;

  // A session kept for its expiry interval, resumed by a new client object: its subscription
  // and the message queued meanwhile are there.
  const keeperOptions = { clean: false, properties: { sessionExpiryInterval: 300 } };
  const [keeper] = await connect('keeper', keeperOptions);
  await subscribe(keeper, { 'fleet/4GH/cmd': { qos: 1 } });
  await new Promise((resolve) => keeper.end(false, {}, resolve));
  await publish(pub, 'fleet/4GH/cmd', 'while away');
  const resumed = mqtt.connect(url, Object.assign({}, server, {
    protocolVersion: 5, clientId: `keeper-${tag}`, reconnectPeriod: 0, connectTimeout: 5000,
  }, keeperOptions));
  const resumedGot = collector(resumed, () => true);
  const resumedAck = await new Promise((resolve, reject) => {
    resumed.once('connect', resolve);
    resumed.once('error', reject);
  });
  await resumedGot.until(1);
  result.resumed = { session_present: resumedAck.sessionPresent, got: resumedGot.map((m) => m.payload) };
  finish(0);
}

main().catch((e) => { result.reason = `failed: ${e && e.message}`; finish(1); });
