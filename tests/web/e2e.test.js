// End-to-end tests of the web client (web/) in a real headless Chromium against the real server.
//
//   cd tests/web && npm ci && npm test
//
// Env: PLACECAST_BIN (default ../../target/debug/placecast), CHROMIUM (default /usr/bin/chromium).
// Screenshots and logs land in tests/web/artifacts/.
'use strict';

const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const { spawn } = require('node:child_process');
const fs = require('node:fs');
const net = require('node:net');
const os = require('node:os');
const path = require('node:path');
const { chromium } = require('playwright-core');

const BIN = process.env.PLACECAST_BIN || path.resolve(__dirname, '../../target/debug/placecast');
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const ARTIFACTS = path.join(__dirname, 'artifacts');
const COOLDOWN_S = 60;
const WINDOW = 8; // --window: edits kept for catch-up, small so the tests can fall out of it
const ADMIN_TOKEN = 'e2e-admin-' + Math.random().toString(36).slice(2);
const ZOOM = 16; // screen pixels per canvas pixel in the tests: the grid is on, pixel centers are clean

let server = null; // { proc, log }
let port = 0;
let base = '';
let dataDir = '';
let browser = null;
const contexts = [];
const pageErrors = [];

// ------------------------------------------------------------------ helpers
function sleep(ms) { return new Promise((r) => setTimeout(r, ms)); }

function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const p = s.address().port;
      s.close(() => resolve(p));
    });
  });
}

async function fetchTimeout(url, opts = {}, ms = 5000) {
  const ctl = new AbortController();
  const t = setTimeout(() => ctl.abort(), ms);
  try {
    return await fetch(url, { ...opts, signal: ctl.signal });
  } finally {
    clearTimeout(t);
  }
}

async function waitHealthy(ms) {
  const deadline = Date.now() + ms;
  let last = '';
  while (Date.now() < deadline) {
    if (server && server.proc.exitCode !== null) {
      throw new Error(`server exited with ${server.proc.exitCode} before it was healthy:\n${server.log.join('')}`);
    }
    try {
      const res = await fetchTimeout(base + '/healthz', {}, 1000);
      if (res.ok) return await res.json();
      last = 'HTTP ' + res.status;
    } catch (err) {
      last = String(err.cause && err.cause.code || err.message);
    }
    await sleep(100);
  }
  throw new Error(`server not healthy after ${ms} ms (${last}):\n${server ? server.log.join('') : ''}`);
}

async function startServer() {
  const args = ['serve', '--listen', `127.0.0.1:${port}`, '--shards', '2', '--data-dir', dataDir,
    '--cooldown', String(COOLDOWN_S), '--window', String(WINDOW), '--admin-token', ADMIN_TOKEN];
  const proc = spawn(BIN, args, { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, RUST_LOG: process.env.RUST_LOG || 'info' } });
  const log = [];
  const logFile = fs.createWriteStream(path.join(ARTIFACTS, 'server.log'), { flags: 'a' });
  logFile.write(`--- ${new Date().toISOString()} ${BIN} ${args.join(' ')}\n`);
  for (const stream of [proc.stdout, proc.stderr]) {
    stream.on('data', (d) => { log.push(String(d)); if (log.length > 200) log.shift(); logFile.write(d); });
  }
  proc.on('exit', () => logFile.end());
  server = { proc, log };
  return waitHealthy(30000);
}

// Stops the server this test started (only its PID): SIGTERM, then SIGKILL after 10 s.
async function stopServer() {
  if (!server) return;
  const { proc } = server;
  server = null;
  if (proc.exitCode !== null || proc.signalCode !== null) return;
  const exited = new Promise((r) => proc.once('exit', r));
  proc.kill('SIGTERM');
  const done = await Promise.race([exited.then(() => true), sleep(10000).then(() => false)]);
  if (!done) {
    proc.kill('SIGKILL');
    await Promise.race([exited, sleep(5000)]);
  }
}

function decodeSnapshot(buf) {
  assert.equal(buf.subarray(0, 4).toString('latin1'), 'PCS1', 'snapshot magic');
  const bpp = buf[4];
  const width = buf.readUInt32LE(8);
  const height = buf.readUInt32LE(12);
  const version = Number(buf.readBigUInt64LE(16));
  const n = width * height;
  const px = new Uint8Array(n);
  for (let i = 0; i < n; i++) {
    px[i] = bpp === 4 ? (i & 1 ? buf[24 + (i >> 1)] & 15 : buf[24 + (i >> 1)] >> 4) : buf[24 + i];
  }
  return { width, height, version, px };
}

async function serverSnapshot() {
  const res = await fetchTimeout(base + '/api/v1/canvas', { cache: 'no-store' });
  assert.equal(res.status, 200);
  const snap = decodeSnapshot(Buffer.from(await res.arrayBuffer()));
  assert.equal(String(snap.version), res.headers.get('x-canvas-version'), 'X-Canvas-Version matches the header');
  return snap;
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
  assert.equal(res.status, 200, JSON.stringify(body));
  return body;
}

async function setCooldown(seconds) {
  const res = await fetchTimeout(base + '/api/v1/admin/cooldown', {
    method: 'POST',
    headers: { 'Content-Type': 'application/json', Authorization: 'Bearer ' + ADMIN_TOKEN },
    body: JSON.stringify({ seconds }),
  });
  assert.equal(res.status, 200, await res.text());
}

async function openPage(name, options = {}) {
  const context = await browser.newContext({ viewport: { width: 1024, height: 720 }, ...options });
  contexts.push(context);
  context.setDefaultTimeout(10000);
  const page = await context.newPage();
  const consoleLog = fs.createWriteStream(path.join(ARTIFACTS, `console-${name}.log`));
  page.on('console', (m) => consoleLog.write(`[${m.type()}] ${m.text()}\n`));
  page.on('pageerror', (err) => { pageErrors.push(`${name}: ${err.stack || err}`); consoleLog.write(`[pageerror] ${err.stack || err}\n`); });
  page.on('close', () => consoleLog.end());
  await page.goto(base + '/', { timeout: 15000 });
  await waitLive(page);
  return page;
}

function waitLive(page, timeout = 15000) {
  return page.waitForFunction(() => window.placecast && window.placecast.status === 'live', null, { timeout, polling: 50 });
}

// Waits until the *visible* canvas shows `want` (RGBA) at the center of canvas pixel (x, y): this
// covers the drawing path (offscreen image, putImageData, drawImage), not only the page's state.
async function waitVisiblePixel(page, x, y, want, timeout = 2000) {
  const read = () => page.evaluate(([x, y]) => {
    const c = document.getElementById('view');
    const r = c.getBoundingClientRect();
    const p = window.placecast.screenPoint(x, y);
    const dx = Math.floor((p.x - r.left) * c.width / r.width);
    const dy = Math.floor((p.y - r.top) * c.height / r.height);
    return Array.from(c.getContext('2d').getImageData(dx, dy, 1, 1).data);
  }, [x, y]);
  const deadline = Date.now() + timeout;
  let got = await read();
  while (got.join() !== want.join() && Date.now() < deadline) {
    await sleep(20);
    got = await read();
  }
  assert.deepEqual(got, want, `visible canvas at (${x}, ${y})`);
}

function hexToRgba(hex) {
  const n = parseInt(hex.slice(1, 7), 16);
  return [n >> 16 & 255, n >> 8 & 255, n & 255, 255];
}

// The page's palette indices as one latin1 string (fast to move out of the page, even at 1000x1000).
async function pageIndices(page) {
  const s = await page.evaluate(() => {
    const px = window.placecast.indices();
    let out = '';
    for (let i = 0; i < px.length; i += 8192) out += String.fromCharCode.apply(null, px.slice(i, i + 8192));
    return out;
  });
  return Buffer.from(s, 'latin1');
}

async function assertPageMatchesServer(page, name) {
  const snap = await serverSnapshot();
  await page.waitForFunction((v) => window.placecast.version >= v, snap.version, { timeout: 10000, polling: 50 });
  const st = await page.evaluate(() => ({ w: window.placecast.width, h: window.placecast.height, v: window.placecast.version }));
  assert.equal(st.w, snap.width, `${name}: width`);
  assert.equal(st.h, snap.height, `${name}: height`);
  assert.equal(st.v, snap.version, `${name}: version equals the server snapshot's`);
  const px = await pageIndices(page);
  let diff = 0;
  for (let i = 0; i < snap.px.length; i++) if (px[i] !== snap.px[i]) diff++;
  assert.equal(diff, 0, `${name}: pixels differing from the server snapshot`);
}

// A pixel whose current color differs from `color` on the server, away from the others used.
let nextPixel = 3;
async function freshPixel(color) {
  const snap = await serverSnapshot();
  for (;;) {
    const i = nextPixel;
    nextPixel += 7;
    const x = i % snap.width;
    const y = Math.floor(i / snap.width) % snap.height;
    if (snap.px[y * snap.width + x] !== color) return { x, y };
  }
}

async function clickPixel(page, x, y, { touch = false } = {}) {
  await page.evaluate(([x, y, z]) => window.placecast.centerOn(x, y, z), [x, y, ZOOM]);
  await page.evaluate(() => new Promise((r) => requestAnimationFrame(() => r())));
  const p = await page.evaluate(([x, y]) => window.placecast.screenPoint(x, y), [x, y]);
  if (touch) await page.touchscreen.tap(p.x, p.y);
  else await page.mouse.click(p.x, p.y);
}

async function shot(page, name) {
  await page.screenshot({ path: path.join(ARTIFACTS, name + '.png'), timeout: 10000 });
}

// ------------------------------------------------------------------ set-up and clean-up
function killOnExit() {
  if (server && server.proc.exitCode === null) {
    try { server.proc.kill('SIGKILL'); } catch (_) { /* gone */ }
  }
}

before(async () => {
  assert.ok(fs.existsSync(BIN), `server binary not found at ${BIN} (build it with cargo build, or set PLACECAST_BIN)`);
  assert.ok(fs.existsSync(CHROMIUM), `chromium not found at ${CHROMIUM} (apt-get install -y chromium)`);
  fs.mkdirSync(ARTIFACTS, { recursive: true });
  fs.rmSync(path.join(ARTIFACTS, 'server.log'), { force: true });
  process.on('exit', killOnExit);
  for (const sig of ['SIGINT', 'SIGTERM']) process.once(sig, () => { killOnExit(); process.exit(130); });
  dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'placecast-web-e2e-'));
  port = await freePort();
  base = `http://127.0.0.1:${port}`;
  await startServer();
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true, // playwright passes --headless and a fresh temporary --user-data-dir
    timeout: 30000,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
});

after(async () => {
  for (const c of contexts) await c.close().catch(() => {});
  if (browser) await browser.close().catch(() => {});
  await stopServer();
  if (dataDir) fs.rmSync(dataDir, { recursive: true, force: true });
});

// ------------------------------------------------------------------ scenarios
let pageA = null;
let pageB = null;

test('the server serves the client files with the right content types', async () => {
  for (const [p, type] of [['/', 'text/html'], ['/app.js', 'javascript'], ['/style.css', 'text/css']]) {
    const res = await fetchTimeout(base + p);
    assert.equal(res.status, 200, p);
    assert.match(res.headers.get('content-type') || '', new RegExp(type), `${p} content type`);
    await res.arrayBuffer();
  }
});

test('two pages load the snapshot, go live and show the palette', async () => {
  pageA = await openPage('A');
  pageB = await openPage('B');
  const info = await (await fetchTimeout(base + '/api/v1/canvas/info')).json();
  for (const [name, page] of [['A', pageA], ['B', pageB]]) {
    assert.equal(await page.locator('#status-text').textContent(), 'Live', `${name}: status text`);
    assert.equal(await page.locator('#palette .swatch').count(), info.palette.length, `${name}: one swatch per color`);
    await assertPageMatchesServer(page, name);
  }
  // Nothing changes, so nothing is drawn: the page is idle.
  const f0 = await pageB.evaluate(() => window.placecast.frames);
  await sleep(600);
  assert.equal(await pageB.evaluate(() => window.placecast.frames), f0, 'no frames drawn while nothing changes');
});

test('a placement in one page appears in the other within a second', async (t) => {
  const palette = await pageA.evaluate(() => window.placecast.palette);
  const color = 5 % palette.length;
  const { x, y } = await freshPixel(color);
  await pageB.evaluate(([x, y, z]) => window.placecast.centerOn(x, y, z), [x, y, ZOOM]);
  await pageA.locator(`#palette .swatch[data-index="${color}"]`).click();
  assert.equal(await pageA.evaluate(() => window.placecast.color), color);

  const t0 = Date.now();
  await clickPixel(pageA, x, y);
  await pageB.waitForFunction(([x, y, c]) => window.placecast.pixel(x, y) === c, [x, y, color], { timeout: 5000, polling: 10 });
  const elapsed = Date.now() - t0;
  t.diagnostic(`the pixel reached the other page ${elapsed} ms after the click`);
  assert.ok(elapsed < 1000, `the pixel reached the other page after ${elapsed} ms`);

  // Read back from the visible canvas of both pages: the drawing path, not only the page's state.
  const want = hexToRgba(palette[color]);
  await waitVisiblePixel(pageB, x, y, want);
  await waitVisiblePixel(pageA, x, y, want);
  await shot(pageA, 'placed-page-A');
  await shot(pageB, 'placed-page-B');

  const snap = await serverSnapshot();
  assert.equal(snap.px[y * snap.width + x], color, 'the server snapshot has the pixel');
});

test('the cooldown countdown shows after placing, and placing again is refused in plain words', async () => {
  const cd = pageA.locator('#cooldown');
  assert.equal(await cd.getAttribute('data-state'), 'cooling');
  assert.match(await cd.textContent(), /^Next pixel in (\d+ s|\d+:\d\d)$/);
  const left = await pageA.evaluate(() => window.placecast.cooldownRemainingMs);
  assert.ok(left > (COOLDOWN_S - 10) * 1000 && left <= COOLDOWN_S * 1000 + 1000, `cooldown remaining ${left} ms`);
  // The countdown counts down.
  const first = await cd.textContent();
  await pageA.waitForFunction((t) => document.getElementById('cooldown').textContent !== t, first, { timeout: 3000, polling: 100 });

  // A second click while cooling down: refused, in plain words, nothing placed.
  const { x, y } = await freshPixel(2);
  await pageA.locator('#palette .swatch[data-index="2"]').click();
  await clickPixel(pageA, x, y);
  const msg = pageA.locator('#message');
  await msg.waitFor({ state: 'visible', timeout: 3000 });
  assert.match(await msg.textContent(), /cooling down.*place another pixel in \d+ (second|minute)/i);

  // After a reload the page forgets the countdown; the server refuses and the page shows it again.
  await pageA.reload({ timeout: 15000 });
  await waitLive(pageA);
  await pageA.locator('#palette .swatch[data-index="2"]').click();
  await clickPixel(pageA, x, y);
  await msg.waitFor({ state: 'visible', timeout: 5000 });
  assert.match(await msg.textContent(), /cooling down/i);
  await pageA.waitForFunction(() => document.getElementById('cooldown').dataset.state === 'cooling', null, { timeout: 3000 });
  await shot(pageA, 'cooldown-page-A');
  assert.notEqual(await pageA.evaluate(([x, y]) => window.placecast.pixel(x, y), [x, y]), 2, 'nothing placed while cooling down');
});

test('a phone-sized page with touch: tap places, one finger pans, two fingers zoom', async () => {
  const phone = await openPage('phone', {
    viewport: { width: 390, height: 844 }, deviceScaleFactor: 2, isMobile: true, hasTouch: true,
  });
  // The palette fits on the screen.
  const boxes = await phone.locator('#palette .swatch').evaluateAll((els) => els.map((e) => e.getBoundingClientRect().toJSON()));
  for (const b of boxes) assert.ok(b.left >= 0 && b.right <= 390 && b.bottom <= 844, `swatch inside the viewport: ${JSON.stringify(b)}`);
  assert.ok(boxes.every((b) => b.width >= 30 && b.height >= 30), 'swatches are big enough to tap');

  const color = 9 % boxes.length;
  await phone.locator(`#palette .swatch[data-index="${color}"]`).tap();
  const { x, y } = await freshPixel(color);
  await clickPixel(phone, x, y, { touch: true });
  await pageB.waitForFunction(([x, y, c]) => window.placecast.pixel(x, y) === c, [x, y, color], { timeout: 3000, polling: 20 });
  await phone.waitForFunction(() => document.getElementById('cooldown').dataset.state === 'cooling', null, { timeout: 3000 });
  assert.match(await phone.locator('#coords').textContent(), new RegExp(`x ${x}, y ${y}`));

  // Touch gestures through the DevTools protocol: a one-finger drag and a two-finger pinch.
  const cdp = await phone.context().newCDPSession(phone);
  const touch = (type, points) => cdp.send('Input.dispatchTouchEvent', { type, touchPoints: points });
  await phone.evaluate(() => window.placecast.fit());
  await phone.evaluate(([z]) => window.placecast.centerOn(20, 20, z), [4]);
  const before = await phone.evaluate(() => ({ p: window.placecast.screenPoint(0, 0), s: window.placecast.scale }));
  await touch('touchStart', [{ x: 200, y: 300, id: 1 }]);
  for (let i = 1; i <= 5; i++) await touch('touchMove', [{ x: 200 - 8 * i, y: 300 - 6 * i, id: 1 }]);
  await touch('touchEnd', []);
  const panned = await phone.evaluate(() => window.placecast.screenPoint(0, 0));
  assert.ok(Math.abs(panned.x - before.p.x + 40) < 2 && Math.abs(panned.y - before.p.y + 30) < 2,
    `one finger pans: ${JSON.stringify(before.p)} -> ${JSON.stringify(panned)}`);
  await touch('touchStart', [{ x: 180, y: 400, id: 1 }, { x: 220, y: 400, id: 2 }]);
  for (let i = 1; i <= 5; i++) await touch('touchMove', [{ x: 180 - 12 * i, y: 400, id: 1 }, { x: 220 + 12 * i, y: 400, id: 2 }]);
  await touch('touchEnd', []);
  const after = await phone.evaluate(() => window.placecast.scale);
  assert.ok(after > before.s * 2, `two fingers zoom in: scale ${before.s} -> ${after}`);
  assert.equal(await phone.evaluate(() => window.placecast.version), await pageB.evaluate(() => window.placecast.version),
    'gestures placed nothing');
  await shot(phone, 'phone');
});

test('a bad stored token is replaced by a new session and the placement goes through', async () => {
  const context = await browser.newContext({ viewport: { width: 800, height: 600 } });
  contexts.push(context);
  context.setDefaultTimeout(10000);
  await context.addInitScript(() => {
    if (!sessionStorage.getItem('seeded')) {
      sessionStorage.setItem('seeded', '1');
      localStorage.setItem('placecast.session', JSON.stringify({ token: 'nobody.0.AAAA', user: 'nobody', expires_at: 0 }));
    }
  });
  const page = await context.newPage();
  page.on('pageerror', (err) => pageErrors.push(`badtoken: ${err.stack || err}`));
  await page.goto(base + '/', { timeout: 15000 });
  await waitLive(page);
  const { x, y } = await freshPixel(3);
  await page.locator('#palette .swatch[data-index="3"]').click();
  await clickPixel(page, x, y);
  await pageB.waitForFunction(([x, y]) => window.placecast.pixel(x, y) === 3, [x, y], { timeout: 5000, polling: 20 });
  const stored = await page.evaluate(() => JSON.parse(localStorage.getItem('placecast.session') || 'null'));
  assert.ok(stored && stored.token && stored.token !== 'nobody.0.AAAA', 'a new token was stored');
});

test('a hidden tab applies batches without drawing, and draws them when shown again', async () => {
  const setHidden = (page, hidden) => page.evaluate((h) => {
    Object.defineProperty(document, 'hidden', { configurable: true, get: () => h });
    Object.defineProperty(document, 'visibilityState', { configurable: true, get: () => (h ? 'hidden' : 'visible') });
    document.dispatchEvent(new Event('visibilitychange'));
  }, hidden);
  const { x, y } = await freshPixel(4);
  await pageB.evaluate(([x, y, z]) => window.placecast.centerOn(x, y, z), [x, y, ZOOM]);
  await pageB.evaluate(() => new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(() => r()))));
  await setHidden(pageB, true);
  const f0 = await pageB.evaluate(() => window.placecast.frames);
  await placeHttp(await newSession(), x, y, 4);
  await pageB.waitForFunction(([x, y]) => window.placecast.pixel(x, y) === 4, [x, y], { timeout: 3000, polling: 20 });
  await sleep(300);
  assert.equal(await pageB.evaluate(() => window.placecast.frames), f0, 'nothing drawn while hidden');
  await setHidden(pageB, false);
  const palette = await pageB.evaluate(() => window.placecast.palette);
  await waitVisiblePixel(pageB, x, y, hexToRgba(palette[4]));
  assert.ok(await pageB.evaluate(() => window.placecast.frames) > f0, 'drawn once shown');
  await pageB.evaluate(() => { delete document.hidden; delete document.visibilityState; });
});

test('a page that was away catches up with since, without reloading the snapshot', async () => {
  const loads0 = await pageB.evaluate(() => window.placecast.snapshotLoads);
  await pageB.evaluate(() => window.placecast.disconnect());
  await pageB.waitForFunction(() => window.placecast.status === 'paused', null, { timeout: 3000 });
  assert.equal(await pageB.locator('#status-text').textContent(), 'Disconnected');
  const placed = [];
  for (let k = 0; k < 3; k++) {
    const color = (k + 10) % 16;
    const { x, y } = await freshPixel(color);
    await placeHttp(await newSession(), x, y, color);
    placed.push([x, y, color]);
  }
  assert.equal(await pageB.evaluate(([x, y]) => window.placecast.pixel(x, y), placed[0]) === placed[0][2], false, 'nothing arrives while away');
  await pageB.evaluate(() => window.placecast.connect());
  await waitLive(pageB);
  await pageB.waitForFunction((ps) => ps.every(([x, y, c]) => window.placecast.pixel(x, y) === c), placed, { timeout: 3000, polling: 20 });
  await assertPageMatchesServer(pageB, 'B');
  assert.equal(await pageB.evaluate(() => window.placecast.snapshotLoads), loads0, 'caught up from the live log, no snapshot reload');
});

test('a page that missed more than the catch-up window reloads the snapshot (close 4001)', async () => {
  const loads0 = await pageB.evaluate(() => window.placecast.snapshotLoads);
  await pageB.evaluate(() => window.placecast.disconnect());
  await pageB.waitForFunction(() => window.placecast.status === 'paused', null, { timeout: 3000 });
  await setCooldown(0);
  try {
    const token = await newSession();
    for (let k = 0; k < WINDOW + 4; k++) {
      const { x, y } = await freshPixel(k % 16);
      await placeHttp(token, x, y, k % 16);
    }
  } finally {
    await setCooldown(COOLDOWN_S);
  }
  await pageB.evaluate(() => window.placecast.connect());
  await pageB.waitForFunction((l) => window.placecast.snapshotLoads > l && window.placecast.status === 'live', loads0, { timeout: 15000, polling: 50 });
  await assertPageMatchesServer(pageB, 'B');
  assert.equal(await pageB.evaluate(() => window.placecast.lastCloseCode), 4001, 'the server closed with 4001');
});

test('the server restarts: both pages reconnect and end with the server snapshot', async (t) => {
  const v0 = (await serverSnapshot()).version;
  await stopServer();
  for (const [name, page] of [['A', pageA], ['B', pageB]]) {
    await page.waitForFunction(() => window.placecast.status !== 'live', null, { timeout: 10000, polling: 50 });
    await page.waitForFunction(() => /Reconnecting in \d+ s|Server unreachable, retrying in \d+ s/.test(document.getElementById('status-text').textContent),
      null, { timeout: 10000, polling: 50 });
    // Once a reconnection attempt has failed, the page says the server is unreachable.
    await page.waitForFunction(() => window.placecast.status === 'unreachable', null, { timeout: 15000, polling: 50 });
    assert.match(await page.locator('#status-text').textContent(), /^Server unreachable, retrying in \d+ s…$/, name);
    assert.match(await page.locator('#banner').textContent(), /Can't reach the server/, name);
    assert.ok(await page.locator('#banner').isVisible(), `${name}: banner shown`);
  }
  // Placing while the server is down says so in plain words (page B has no cooldown).
  await clickPixel(pageB, 1, 1);
  const msg = pageB.locator('#message');
  await msg.waitFor({ state: 'visible', timeout: 20000 });
  assert.match(await msg.textContent(), /Can't reach the server/);
  await shot(pageB, 'server-down-page-B');

  await startServer();
  for (const page of [pageA, pageB]) await waitLive(page, 45000);
  for (const page of [pageA, pageB]) assert.equal(await page.locator('#banner').isVisible(), false, 'banner gone once live');
  t.diagnostic('close codes seen: ' + JSON.stringify(await Promise.all([pageA, pageB].map((p) => p.evaluate(() => window.placecast.lastCloseCode)))));
  const v1 = (await serverSnapshot()).version;
  assert.ok(v1 >= v0, `the restarted server kept its edits (version ${v0} -> ${v1})`);

  // New edits after the restart reach both pages.
  const token = await newSession();
  const { x, y } = await freshPixel(7);
  const placed = await placeHttp(token, x, y, 7);
  for (const page of [pageA, pageB]) {
    await page.waitForFunction(([x, y, v]) => window.placecast.pixel(x, y) === 7 && window.placecast.version >= v,
      [x, y, placed.version], { timeout: 3000, polling: 20 });
  }
  await assertPageMatchesServer(pageA, 'A');
  await assertPageMatchesServer(pageB, 'B');
  assert.equal(await pageA.locator('#status-text').textContent(), 'Live');
  await shot(pageA, 'after-restart-page-A');
  await shot(pageB, 'after-restart-page-B');
});

test('no uncaught errors in the pages', () => {
  assert.deepEqual(pageErrors, []);
});
