// MQTT over WebSocket from inside headless Chromium (Debian's, through puppeteer-core): MQTT.js's
// browser bundle runs in a page and talks to the broker over the browser's own WebSocket.
//   node browser_mqtt.js WS_URL MQTT_JS_BUNDLE PROTOCOL_VERSION(4|5) BIG_PAYLOAD_BYTES
// (WS_URL ws://... or wss://...)
// The page connects, subscribes to gate/+/state at QoS 1 (a retained state is waiting there),
// publishes BIG_PAYLOAD_BYTES to browser/upload at QoS 1, then 50 QoS 1 states it receives back
// through its own subscription. Prints one JSON object with what it saw; exits 1 with
// {"error": ...} on failure, within 30 s.
const http = require('http');
const puppeteer = require('puppeteer-core');

const [wsUrl, bundle, version, bigBytes] = process.argv.slice(2);
const say = (line) => console.log(JSON.stringify(line));
const fail = (why) => {
  say({ error: String(why && why.message ? why.message : why) });
  process.exit(1);
};
setTimeout(() => fail('timed out after 30 s'), 30000);

(async () => {
  const browser = await puppeteer.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage'],
    // wss:// to the tests' own CA, which is not in the browser's store: the TLS handshake is
    // Chromium's (BoringSSL's), the certificate goes unchecked.
    acceptInsecureCerts: wsUrl.startsWith('wss:'),
  });
  // The page comes from a web server on loopback, as a local web app's would: Chromium lets
  // a page from a public or opaque origin (about:blank) reach a loopback address only after a
  // permission prompt (Local Network Access).
  const server = http.createServer((_, res) => {
    res.writeHead(200, { 'content-type': 'text/html' });
    res.end('<!doctype html><title>gate app</title>');
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  const page = await browser.newPage();
  page.on('pageerror', (e) => say({ page_error: e.message }));
  page.on('console', (m) => m.type() === 'error' && say({ console_error: m.text() }));
  await page.goto(`http://127.0.0.1:${server.address().port}/`);
  await page.addScriptTag({ path: bundle });
  const seen = await page.evaluate(
    async (url, protocolVersion, big) => {
      const client = mqtt.connect(url, {
        protocolVersion,
        clientId: `browser-${protocolVersion}`,
        clean: true,
        reconnectPeriod: 0,
        connectTimeout: 10000,
      });
      const states = [];
      let retained = null;
      let allBack;
      const back = new Promise((resolve) => {
        allBack = resolve;
      });
      client.on('message', (topic, payload, packet) => {
        const text = new TextDecoder().decode(payload);
        if (packet.retain) {
          retained = { topic, text, qos: packet.qos };
          return;
        }
        states.push(text);
        if (states.length === 50) allBack();
      });
      await new Promise((resolve, reject) => {
        client.once('connect', resolve);
        client.once('error', reject);
      });
      const granted = await client.subscribeAsync('gate/+/state', { qos: 1 });
      // Every byte value, repeated: it must arrive unchanged.
      const upload = new Uint8Array(big);
      for (let i = 0; i < big; i++) upload[i] = i % 256;
      await client.publishAsync('browser/upload', upload, { qos: 1 });
      for (let i = 0; i < 50; i++) {
        await client.publishAsync('gate/1AB/state', `state-${i}`, { qos: 1 });
      }
      await back;
      await client.endAsync();
      return {
        protocol: client.options.protocolVersion,
        granted: granted.map((g) => g.qos),
        retained,
        states,
      };
    },
    wsUrl,
    Number(version),
    Number(bigBytes),
  );
  say(seen);
  server.close();
  await Promise.race([browser.close(), new Promise((resolve) => setTimeout(resolve, 2000))]);
  process.exit(0);
})().catch(fail);
