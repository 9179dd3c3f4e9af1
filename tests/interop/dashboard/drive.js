// Drives the broker's dashboard in headless Chromium (Debian's, through puppeteer-core).
//   node drive.js URL CLIENT_ID [TOKEN]   check: the page shows CLIENT_ID, its Kick button
//                                         disconnects it, the feed shows the event
//   node drive.js URL --screenshot FILE SECONDS   wait, then save a PNG of the page
//   node drive.js URL --bridge NAME               check: the bridges table shows NAME connected
//   node drive.js URL --cluster NODE PEER         check: the cluster table shows this node NODE
//                                                 connected to NATS, and the other node PEER
//   node drive.js URL --persistence STATE         check: the persistence section shows STATE
//                                                 (ok, writes-failing, syncs-failing,
//                                                 durability-lost); prints its text and cards;
//                                                 with STATE hidden, whether the section is
//                                                 hidden once the first summary came
// Prints one JSON object per step; exits 1 with {"error": ...} on failure, within 30 s (plus
// the wait of a screenshot).
const puppeteer = require('puppeteer-core');

const [url, clientId, third, fourth] = process.argv.slice(2);
const say = (line) => console.log(JSON.stringify(line));
// Closing can wait on the page's open event stream: bounded, then exit.
const finish = async (browser) => {
  await Promise.race([browser.close(), new Promise((resolve) => setTimeout(resolve, 2000))]);
  process.exit(0);
};
const fail = (why) => {
  say({ error: String(why && why.message ? why.message : why) });
  process.exit(1);
};
const budget = 30 + (clientId === '--screenshot' ? Number(fourth) : 0);
setTimeout(() => fail(`timed out after ${budget} s`), budget * 1000);

(async () => {
  const browser = await puppeteer.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage'],
  });
  const page = await browser.newPage();
  await page.setViewport({ width: 1440, height: 1100 });
  page.on('pageerror', (e) => say({ page_error: e.message }));
  if (clientId === '--screenshot') {
    await page.goto(url, { waitUntil: 'domcontentloaded' });
    await new Promise((resolve) => setTimeout(resolve, Number(fourth) * 1000));
    await page.screenshot({ path: third, fullPage: true });
    say({ screenshot: third });
    await finish(browser);
    return;
  }
  if (clientId === '--bridge') {
    await page.goto(url, { waitUntil: 'domcontentloaded' });
    const row = `tr[data-bridge="${third}"][data-state="connected"]`;
    await page.waitForSelector(row, { timeout: 10000, visible: true });
    say({ bridge: await page.$eval(row, (e) => Array.from(e.cells, (c) => c.textContent)) });
    await finish(browser);
    return;
  }
  if (clientId === '--cluster') {
    await page.goto(url, { waitUntil: 'domcontentloaded' });
    const self = `tr[data-node="${third}"][data-state="connected"]`;
    const peer = `tr[data-node="${fourth}"][data-state="peer"]`;
    await page.waitForSelector(self, { timeout: 10000, visible: true });
    await page.waitForSelector(peer, { timeout: 10000, visible: true });
    const cells = (e) => Array.from(e.cells, (c) => c.textContent);
    say({ node: await page.$eval(self, cells), peer: await page.$eval(peer, cells) });
    await finish(browser);
    return;
  }
  if (clientId === '--persistence' && third === 'hidden') {
    await page.goto(url, { waitUntil: 'domcontentloaded' });
    await page.waitForFunction(() => document.getElementById('c-connections').textContent !== '–', { timeout: 10000 });
    say({ hidden: await page.$eval('#persistence-section', (e) => e.hidden) });
    await finish(browser);
    return;
  }
  if (clientId === '--persistence') {
    await page.goto(url, { waitUntil: 'domcontentloaded' });
    const state = `#persistence-state[data-state="${third}"]`;
    await page.waitForSelector(state, { timeout: 10000, visible: true });
    // The rates need two summaries.
    await page.waitForFunction(() => document.getElementById('p-commits').textContent !== '–', { timeout: 10000 });
    const text = (id) => page.$eval(id, (e) => e.textContent);
    say({
      persistence: await text(state),
      fsync: await text('#p-fsync'),
      log: await text('#p-log'),
      commits: await text('#p-commits'),
    });
    await finish(browser);
    return;
  }
  if (third) {
    await page.evaluateOnNewDocument((t) => sessionStorage.setItem('switchboard-token', t), third);
  }
  await page.goto(url, { waitUntil: 'domcontentloaded' });
  const row = `tr[data-client-id="${clientId}"]`;
  await page.waitForSelector(row, { timeout: 10000 });
  say({ shown: clientId });
  await page.waitForFunction(() => document.getElementById('c-connections').textContent !== '–', { timeout: 10000 });
  say({ stats: await page.$eval('#c-connections', (e) => e.textContent) });
  await page.click(`button[data-kick="${clientId}"]`);
  say({ clicked: 'kick' });
  const event = `#feed li[data-event="disconnected"][data-client-id="${clientId}"]`;
  await page.waitForSelector(event, { timeout: 10000 });
  say({ feed: await page.$eval(event, (e) => e.textContent) });
  await finish(browser);
})().catch(fail);
