// Browser tests of a live canvas resize (POST /api/v1/admin/resize, the resize message of the
// WebSocket stream, PROTOCOL.md) in the web client (web/app.js) and the moderators' page
// (web/admin.js), in a real headless Chromium against the real server.
//
//   cd tests/web && npm ci && node --test resize.test.js
//
// Env: PLACECAST_BIN, CHROMIUM, PLACECAST_WEB_FROM_DISK=1 (as in e2e.test.js). Logs land in
// tests/web/artifacts/ (resize-server.log, console-resize-*.log).
'use strict';

const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const crypto = require('node:crypto');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { chromium } = require('playwright-core');

const { BIN, prepare, sleep, freePort, fetchTimeout, until, stop, launchServer, assertPageMatches, decodeSnapshot, hexToRgba } = require('./harness');
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const ARTIFACTS = path.join(__dirname, 'artifacts');
const ADMIN_TOKEN = 'resize-admin-' + crypto.randomBytes(24).toString('hex');
const SECRET = 'resize-secret-' + crypto.randomBytes(24).toString('hex');
const WIDTH = 64;
const HEIGHT = 48;
const WEB_DIR = path.resolve(__dirname, '../../web');
const WEB_FROM_DISK = process.env.PLACECAST_WEB_FROM_DISK === '1';
const WEB_FILES = { '/': 'index.html', '/index.html': 'index.html', '/app.js': 'app.js', '/style.css': 'style.css',
  '/admin': 'admin.html', '/admin.js': 'admin.js' };
// As in e2e.test.js: every page shares 127.0.0.1, so the per-address limits are off; short drains.
const SERVER_FLAGS = ['--max-conns-per-addr', '0', '--sessions-per-min', '0', '--placements-per-addr-per-min', '0',
  '--catchups-per-addr-per-min', '0', '--drain-grace-ms', '200', '--drain-spread-s', '1'];
// Generous for a loaded 2-core machine; every wait ends as soon as its condition holds.
const WAIT_MS = 15000;

let server = null; // { proc, log, port, base, dataDir }
let base = '';
let browser = null;
const contexts = [];
const pageErrors = [];

// ------------------------------------------------------------------ helpers
async function launch(port, dataDir) {
  const args = ['serve', '--listen', `127.0.0.1:${port}`, '--shards', '2', '--data-dir', dataDir,
    '--width', String(WIDTH), '--height', String(HEIGHT), '--cooldown', '0', '--batch-ms', '20',
    '--admin-token', ADMIN_TOKEN, '--secret', SECRET, ...SERVER_FLAGS];
  return launchServer({ args, port, logName: 'resize-server.log', fields: { dataDir } });
}

async function serverSnapshot(query = '') {
  const res = await fetchTimeout(base + '/api/v1/canvas' + query, { cache: 'no-store' });
  assert.equal(res.status, 200, await res.clone().text());
  return decodeSnapshot(Buffer.from(await res.arrayBuffer()));
}

async function newSession() {
  const res = await fetchTimeout(base + '/api/v1/session', { method: 'POST' });
  assert.equal(res.status, 200);
  return (await res.json()).token;
}

async function placeHttp(token, x, y, color) {
  const res = await fetchTimeout(base + '/api/v1/place', {
    method: 'POST',
    headers: { 'Content-Type': 'application/json', Authorization: 'Bearer ' + token },
    body: JSON.stringify({ x, y, color }),
  });
  const body = await res.json();
  assert.equal(res.status, 200, `place (${x}, ${y}): ${JSON.stringify(body)}`);
  return body;
}

async function resize(width, height) {
  const res = await fetchTimeout(base + '/api/v1/admin/resize', {
    method: 'POST',
    headers: { 'Content-Type': 'application/json', Authorization: 'Bearer ' + ADMIN_TOKEN },
    body: JSON.stringify({ width, height }),
  });
  const text = await res.text();
  assert.equal(res.status, 200, `resize to ${width}x${height}: ${text}`);
  const body = JSON.parse(text);
  assert.equal(body.action, 'resize');
  assert.ok(Number.isInteger(body.version) && body.version > 0, text);
  return body;
}

async function newContext() {
  const context = await browser.newContext({ viewport: { width: 1024, height: 720 } });
  contexts.push(context);
  context.setDefaultTimeout(WAIT_MS);
  if (WEB_FROM_DISK) {
    await context.route((url) => url.hostname === '127.0.0.1' && Object.hasOwn(WEB_FILES, url.pathname), (route) => {
      const file = WEB_FILES[new URL(route.request().url()).pathname];
      const type = file.endsWith('.js') ? 'text/javascript' : file.endsWith('.css') ? 'text/css' : 'text/html';
      return route.fulfill({ status: 200, contentType: type + '; charset=utf-8', body: fs.readFileSync(path.join(WEB_DIR, file)) });
    });
  }
  return context;
}

function watchPage(page, name) {
  const consoleLog = fs.createWriteStream(path.join(ARTIFACTS, `console-resize-${name}.log`));
  page.on('console', (m) => consoleLog.write(`[${m.type()}] ${m.text()}\n`));
  page.on('pageerror', (err) => { pageErrors.push(`${name}: ${err.stack || err}`); consoleLog.write(`[pageerror] ${err.stack || err}\n`); });
  page.on('close', () => consoleLog.end());
}

// Opens the client; `sockets` collects every WebSocket the page opens (to prove none is reopened),
// `setup(page)` runs before it loads (routes).
async function openPage(name, { sockets = [], setup = null } = {}) {
  const context = await newContext();
  const page = await context.newPage();
  watchPage(page, name);
  page.on('websocket', (ws) => sockets.push(ws.url()));
  if (setup) await setup(page);
  await page.goto(base + '/', { timeout: WAIT_MS });
  await waitLive(page);
  return page;
}

function waitLive(page) {
  return page.waitForFunction(() => window.placecast && window.placecast.status === 'live', null, { timeout: WAIT_MS, polling: 50 });
}

// Waits until every [x, y, color] of `pixels` is in the page's live model.
function waitPixels(page, pixels) {
  return page.waitForFunction((ps) => ps.every(([x, y, c]) => window.placecast.pixel(x, y) === c), pixels, { timeout: WAIT_MS, polling: 20 });
}

function waitSize(page, w, h) {
  return page.waitForFunction(([w, h]) => window.placecast.width === w && window.placecast.height === h, [w, h], { timeout: WAIT_MS, polling: 20 });
}

async function assertPageMatchesServer(page, name) {
  await assertPageMatches(page, await serverSnapshot(), name, WAIT_MS);
}

function nextFrame(page) {
  return page.evaluate(() => new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(() => r()))));
}

// The visible canvas's RGBA at the center of canvas pixel (x, y).
function visiblePixel(page, x, y) {
  return page.evaluate(([x, y]) => {
    const c = document.getElementById('view');
    const r = c.getBoundingClientRect();
    const p = window.placecast.screenPoint(x, y);
    const dx = Math.floor((p.x - r.left) * c.width / r.width);
    const dy = Math.floor((p.y - r.top) * c.height / r.height);
    return Array.from(c.getContext('2d').getImageData(dx, dy, 1, 1).data);
  }, [x, y]);
}

async function waitVisiblePixel(page, x, y, want) {
  let got = null;
  await until(`the visible canvas to show ${want} at (${x}, ${y})`, async () => {
    got = await visiblePixel(page, x, y);
    return got.join() === want.join();
  }, WAIT_MS, 20).catch((err) => { throw new Error(`${err.message}; it shows ${got}`); });
}

// Moves the history slider to version v (as a drag would: an input event).
function slideTo(page, v) {
  return page.evaluate((v) => {
    const r = document.getElementById('history-range');
    r.value = String(v);
    r.dispatchEvent(new Event('input', { bubbles: true }));
  }, v);
}

async function historyIndexed(version) {
  await until(`the history index to reach version ${version}`, async () => {
    const b = await (await fetchTimeout(base + '/api/v1/history/info')).json();
    return b.version >= version;
  }, WAIT_MS);
}

// The resize message (PROTOCOL.md): u8 type 2, 3 zero bytes, u64 from, u64 to, u32 width, u32 height.
function resizeMessage(from, to, width, height) {
  const b = Buffer.alloc(28);
  b[0] = 0x02;
  b.writeBigUInt64LE(BigInt(from), 4);
  b.writeBigUInt64LE(BigInt(to), 12);
  b.writeUInt32LE(width, 20);
  b.writeUInt32LE(height, 24);
  return b;
}

// ------------------------------------------------------------------ set-up and clean-up
let tmpDir = '';
before(async () => {
  prepare(CHROMIUM, () => [server]);
  fs.mkdirSync(ARTIFACTS, { recursive: true });
  fs.rmSync(path.join(ARTIFACTS, 'resize-server.log'), { force: true });
  tmpDir = fs.mkdtempSync(path.join(os.tmpdir(), 'placecast-web-resize-'));
  const port = await freePort();
  server = await launch(port, tmpDir);
  base = server.base;
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    timeout: 30000,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
      ...(WEB_FROM_DISK ? ['--disable-features=LocalNetworkAccessChecks'] : [])],
  });
});

after(async () => {
  for (const c of contexts) await c.close().catch(() => {});
  if (browser) await browser.close().catch(() => {});
  if (server) await stop(server);
  if (tmpDir) fs.rmSync(tmpDir, { recursive: true, force: true });
});

// ------------------------------------------------------------------ scenarios
let token = '';
let pageA = null;
let pageB = null;
let adminPage = null;
let palette = [];
const before1 = []; // versions placed before the first resize
let resize1 = null; // its answer
const after1 = []; // versions placed after it

test('a live page grows with the canvas: no reload, no new socket, the view kept, every pixel at its (x, y)', async (t) => {
  token = await newSession();
  // Before the resize: the old canvas's last pixel (its index changes with the width) and another.
  before1.push((await placeHttp(token, WIDTH - 1, HEIGHT - 1, 3)).version);
  before1.push((await placeHttp(token, 5, 20, 9)).version);

  const sockets = [];
  pageA = await openPage('A', { sockets });
  palette = await pageA.evaluate(() => window.placecast.palette);
  await waitPixels(pageA, [[WIDTH - 1, HEIGHT - 1, 3], [5, 20, 9]]);
  assert.equal(await pageA.evaluate(() => `${window.placecast.width}x${window.placecast.height}`), `${WIDTH}x${HEIGHT}`);

  // The moderators' page, signed in as the operator, before the resize too.
  adminPage = await (await newContext()).newPage();
  watchPage(adminPage, 'admin');
  await adminPage.goto(base + '/admin', { timeout: WAIT_MS });
  await adminPage.waitForFunction(() => window.placecastAdmin !== undefined, null, { timeout: WAIT_MS, polling: 50 });
  await adminPage.locator('#token-input').fill(ADMIN_TOKEN);
  await adminPage.locator('#token-input').press('Enter');
  await adminPage.waitForFunction(([w, h]) => window.placecastAdmin.signedIn && window.placecastAdmin.width === w &&
    window.placecastAdmin.height === h && window.placecastAdmin.loads.canvas > 0, [WIDTH, HEIGHT], { timeout: WAIT_MS, polling: 20 });

  await pageA.evaluate(() => { window.__noReload = 1; });
  const view0 = await pageA.evaluate(() => ({ scale: window.placecast.scale, origin: window.placecast.screenPoint(0, 0) }));
  const loads0 = await pageA.evaluate(() => window.placecast.snapshotLoads);
  assert.equal(sockets.length, 1, 'one WebSocket so far');

  resize1 = await resize(100, 80);
  t.diagnostic('resize answer: ' + JSON.stringify(resize1));
  assert.ok(resize1.version > before1[1], 'the resize takes a version after the edits');
  // In the new area, and in the old one (whose indexes now use the new width).
  after1.push((await placeHttp(token, 90, 70, 5)).version);
  after1.push((await placeHttp(token, 10, 10, 7)).version);

  await waitSize(pageA, 100, 80);
  await waitPixels(pageA, [[90, 70, 5], [10, 10, 7], [WIDTH - 1, HEIGHT - 1, 3], [5, 20, 9]]);
  const st = await pageA.evaluate(() => ({
    marker: window.__noReload, loads: window.placecast.snapshotLoads, resizes: window.placecast.resizes,
    status: window.placecast.status, scale: window.placecast.scale, origin: window.placecast.screenPoint(0, 0),
    fresh: window.placecast.pixel(99, 79), outside: window.placecast.pixel(100, 79),
  }));
  assert.equal(st.marker, 1, 'the page was not reloaded');
  assert.equal(st.loads, loads0, 'no snapshot fetched again');
  assert.equal(st.resizes, 1, 'the resize message was applied');
  assert.equal(st.status, 'live');
  assert.equal(sockets.length, 1, 'the WebSocket was not reopened');
  assert.equal(st.scale, view0.scale, 'the zoom is kept');
  assert.deepEqual(st.origin, view0.origin, 'the view is not moved');
  assert.equal(st.fresh, 0, 'a new pixel is color 0');
  assert.equal(st.outside, -1, 'the new size bounds the model');
  await assertPageMatchesServer(pageA, 'A');

  // Drawn too: the new offscreen canvas shows the new pixel, the old ones and the new white area.
  await pageA.evaluate(() => window.placecast.centerOn(60, 45, 6));
  await nextFrame(pageA);
  await waitVisiblePixel(pageA, 90, 70, hexToRgba(palette[5]));
  await waitVisiblePixel(pageA, WIDTH - 1, HEIGHT - 1, hexToRgba(palette[3]));
  await waitVisiblePixel(pageA, 95, 75, hexToRgba(palette[0]));
  await pageA.screenshot({ path: path.join(ARTIFACTS, 'resize-live.png'), timeout: WAIT_MS });

  // The moderators' page takes the new size at its next refresh (every 5 s).
  await adminPage.waitForFunction(() => window.placecastAdmin.width === 100 && window.placecastAdmin.height === 80 &&
    document.getElementById('view').width === 100 && document.getElementById('view').height === 80,
  null, { timeout: 20000, polling: 50 });
});

test('a page opened after the resize gets the grown canvas from its snapshot', async () => {
  pageB = await openPage('B');
  const st = await pageB.evaluate(() => ({ w: window.placecast.width, h: window.placecast.height, resizes: window.placecast.resizes }));
  assert.deepEqual(st, { w: 100, h: 80, resizes: 0 });
  await waitPixels(pageB, [[90, 70, 5], [10, 10, 7], [WIDTH - 1, HEIGHT - 1, 3], [5, 20, 9]]);
  await assertPageMatchesServer(pageB, 'B');
});

test('a page away during a resize catches it up with since, without reloading the snapshot', async () => {
  const loads0 = await pageB.evaluate(() => window.placecast.snapshotLoads);
  await pageB.evaluate(() => window.placecast.disconnect());
  await pageB.waitForFunction(() => window.placecast.status === 'paused', null, { timeout: WAIT_MS, polling: 20 });
  const before = (await placeHttp(token, 99, 79, 2)).version; // the last pixel at width 100
  // Once that edit went out in a batch: a resize logged while an edit is still uncut can be
  // answered a moment before the server's live size grows (a placement sent at once may then be
  // refused as outside the canvas), a server-side race this test is not about.
  await waitPixels(pageA, [[99, 79, 2]]);
  await resize(120, 90);
  await placeHttp(token, 110, 85, 4);
  await placeHttp(token, 99, 79, 6);
  // The live page follows the second resize too.
  await waitSize(pageA, 120, 90);
  await waitPixels(pageA, [[110, 85, 4], [99, 79, 6], [90, 70, 5]]);
  assert.equal(await pageA.evaluate(() => window.placecast.resizes), 2);
  assert.equal(await pageB.evaluate(() => window.placecast.width), 100, 'nothing arrives while away');
  await pageB.evaluate(() => window.placecast.connect());
  await waitLive(pageB);
  await waitSize(pageB, 120, 90);
  await waitPixels(pageB, [[110, 85, 4], [99, 79, 6], [90, 70, 5], [WIDTH - 1, HEIGHT - 1, 3]]);
  const st = await pageB.evaluate(() => ({ loads: window.placecast.snapshotLoads, resizes: window.placecast.resizes }));
  assert.equal(st.loads, loads0, 'caught up from the stream (batch, resize, batch), no snapshot reload');
  assert.equal(st.resizes, 1);
  assert.ok(before > resize1.version);
  await assertPageMatchesServer(pageB, 'B');
  await assertPageMatchesServer(pageA, 'A');
});

test('the history view shows each version at its own size', async () => {
  await historyIndexed(after1[1]);
  // The server's canvas at a version before the first resize is the old size.
  const past = await serverSnapshot('?at=' + before1[1]);
  assert.equal(`${past.width}x${past.height}`, `${WIDTH}x${HEIGHT}`);

  await pageA.locator('#tool-history').click();
  await pageA.waitForFunction((v) => !document.getElementById('history-range').disabled && window.placecast.historyView.max >= v,
    after1[1], { timeout: WAIT_MS, polling: 20 });
  await pageA.evaluate(() => window.placecast.centerOn(60, 45, 6));

  await slideTo(pageA, before1[1]);
  await pageA.waitForFunction((v) => { const h = window.placecast.historyView; return h.active && h.version === v && !h.loading; },
    before1[1], { timeout: WAIT_MS, polling: 20 });
  let st = await pageA.evaluate(() => ({ size: window.placecast.historySize, corner: window.placecast.shownPixel(63, 47),
    left: window.placecast.shownPixel(5, 20), grown: window.placecast.shownPixel(90, 70), live: window.placecast.pixel(90, 70),
    width: window.placecast.width }));
  assert.deepEqual(st, { size: { width: WIDTH, height: HEIGHT }, corner: 3, left: 9, grown: -1, live: 5, width: 120 });
  await waitVisiblePixel(pageA, WIDTH - 1, HEIGHT - 1, hexToRgba(palette[3]));
  await waitVisiblePixel(pageA, 5, 20, hexToRgba(palette[9]));
  await nextFrame(pageA);
  assert.notDeepEqual(await visiblePixel(pageA, 90, 70), hexToRgba(palette[5]), 'the area the canvas grew by is not drawn at a version before it');
  await pageA.screenshot({ path: path.join(ARTIFACTS, 'resize-history-before.png'), timeout: WAIT_MS });

  // A version after the first resize: the view's canvas is reallocated at 100x80.
  await slideTo(pageA, after1[1]);
  await pageA.waitForFunction((v) => { const h = window.placecast.historyView; return h.active && h.version === v && !h.loading; },
    after1[1], { timeout: WAIT_MS, polling: 20 });
  st = await pageA.evaluate(() => ({ size: window.placecast.historySize, corner: window.placecast.shownPixel(63, 47),
    grown: window.placecast.shownPixel(90, 70), old: window.placecast.shownPixel(10, 10), beyond: window.placecast.shownPixel(110, 85) }));
  assert.deepEqual(st, { size: { width: 100, height: 80 }, corner: 3, grown: 5, old: 7, beyond: -1 });
  await waitVisiblePixel(pageA, 90, 70, hexToRgba(palette[5]));

  // Live: the current, larger canvas at once.
  await pageA.locator('#history-live').click();
  await waitVisiblePixel(pageA, 110, 85, hexToRgba(palette[4]));
  await waitVisiblePixel(pageA, 99, 79, hexToRgba(palette[6]));
  await pageA.locator('#history-panel .close').click();
  assert.equal(await pageA.evaluate(() => window.__noReload), 1, 'still the same page');
});

test('a resize message out of order is skipped when stale and reloads the snapshot on a gap', async (t) => {
  const routed = [];
  const sockets = [];
  const page = await openPage('C', {
    sockets,
    // The page's socket goes through the test (forwarded both ways), so messages can be injected.
    setup: (p) => p.routeWebSocket(/\/ws(\?|$)/, (ws) => { ws.connectToServer(); routed.push(ws); }),
  });
  await assertPageMatchesServer(page, 'C');
  const st0 = await page.evaluate(() => ({ v: window.placecast.version, loads: window.placecast.snapshotLoads, w: window.placecast.width }));
  assert.equal(st0.w, 120);
  assert.ok(st0.v >= 2);

  // Already applied (to <= our version): skipped, nothing reloaded or grown.
  routed[routed.length - 1].send(resizeMessage(st0.v - 1, st0.v, 200, 150));
  const marker = (await placeHttp(token, 1, 1, 11)).version;
  await waitPixels(page, [[1, 1, 11]]);
  let st = await page.evaluate(() => ({ v: window.placecast.version, loads: window.placecast.snapshotLoads, w: window.placecast.width, resizes: window.placecast.resizes }));
  assert.deepEqual(st, { v: marker, loads: st0.loads, w: 120, resizes: 0 }, 'a stale resize is skipped');

  // A gap (from ahead of our version): the snapshot is reloaded, the size is the server's.
  routed[routed.length - 1].send(resizeMessage(marker + 1000, marker + 1001, 200, 150));
  await page.waitForFunction((n) => window.placecast.snapshotLoads > n && window.placecast.status === 'live', st0.loads,
    { timeout: WAIT_MS, polling: 20 });
  st = await page.evaluate(() => ({ w: window.placecast.width, h: window.placecast.height, resizes: window.placecast.resizes }));
  assert.deepEqual(st, { w: 120, h: 90, resizes: 0 }, 'the gap was not applied');
  t.diagnostic(`sockets opened: ${sockets.length}`);
  await assertPageMatchesServer(page, 'C');
  // And it follows the stream from there.
  await placeHttp(token, 115, 88, 12);
  await waitPixels(page, [[115, 88, 12]]);
  await page.context().close();
});

test('no uncaught errors in the pages', () => {
  assert.deepEqual(pageErrors, []);
});
