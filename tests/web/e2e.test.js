// End-to-end tests of the web client (web/) in a real headless Chromium against the real server.
//
//   cd tests/web && npm ci && npm test
//
// Env: PLACECAST_BIN (default ../../target/debug/placecast), CHROMIUM (default /usr/bin/chromium),
// PLACECAST_WEB_FROM_DISK=1 (the pages get web/app.js and web/style.css from this checkout instead
// of the copies embedded in the binary: for working on the client without rebuilding the server).
// Screenshots and logs land in tests/web/artifacts/.
'use strict';

const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const { execFileSync } = require('node:child_process');
const crypto = require('node:crypto');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { chromium } = require('playwright-core');

const { BIN, prepare, sleep, freePort, fetchTimeout, until, exited, stop, launchServer, assertPageMatches, decodeSnapshot, hexToRgba } = require('./harness');
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const ARTIFACTS = path.join(__dirname, 'artifacts');
const COOLDOWN_S = 60;
const WINDOW = 8; // --window: edits kept for catch-up, small so the tests can fall out of it
// The server refuses secrets and admin tokens under 32 bytes.
const ADMIN_TOKEN = 'e2e-admin-' + crypto.randomBytes(24).toString('hex');
const SECRET = 'e2e-secret-' + crypto.randomBytes(24).toString('hex');
const ZOOM = 16; // screen pixels per canvas pixel in the tests: the grid is on, pixel centers are clean
const WEB_DIR = path.resolve(__dirname, '../../web');
const WEB_FROM_DISK = process.env.PLACECAST_WEB_FROM_DISK === '1';
const WEB_FILES = { '/': 'index.html', '/index.html': 'index.html', '/app.js': 'app.js', '/style.css': 'style.css' };
// Every loopback client shares 127.0.0.1: the per-address limits are off unless a test is about
// them. Drains are short so that a stop (SIGTERM drains too) takes about a second.
const SERVER_FLAGS = ['--max-conns-per-addr', '0', '--sessions-per-min', '0', '--placements-per-addr-per-min', '0',
  '--drain-grace-ms', '200', '--drain-spread-s', '1'];

let server = null; // the main server: { proc, log, port, base, dataDir, name }
let port = 0;
let base = '';
let dataDir = '';
const extraServers = []; // servers started by single tests, stopped in after() if still running
let browser = null;
const contexts = [];
const pageErrors = [];

// ------------------------------------------------------------------ helpers
// Starts a server process and waits until it is healthy. The log goes to artifacts/server.log.
async function launch({ name, port: p, dataDir: dir, extra = [], cooldown = COOLDOWN_S }) {
  const args = ['serve', '--listen', `127.0.0.1:${p}`, '--shards', '2', '--data-dir', dir,
    '--cooldown', String(cooldown), '--window', String(WINDOW), '--admin-token', ADMIN_TOKEN, '--secret', SECRET,
    ...SERVER_FLAGS, ...extra];
  return launchServer({ args, port: p, name, logName: 'server.log', fields: { dataDir: dir } });
}

async function startServer() {
  server = await launch({ name: 'main', port, dataDir });
  return server;
}

async function stopServer() {
  if (!server) return;
  const srv = server;
  server = null;
  await stop(srv);
}

async function serverSnapshot(b = base) {
  const res = await fetchTimeout(b + '/api/v1/canvas', { cache: 'no-store' });
  assert.equal(res.status, 200);
  const snap = decodeSnapshot(Buffer.from(await res.arrayBuffer()));
  assert.equal(String(snap.version), res.headers.get('x-canvas-version'), 'X-Canvas-Version matches the header');
  return snap;
}

async function newSession(b = base) {
  const res = await fetchTimeout(b + '/api/v1/session', { method: 'POST' });
  assert.equal(res.status, 200);
  return (await res.json()).token;
}

async function placeHttp(token, x, y, color, b = base) {
  const res = await fetchTimeout(b + '/api/v1/place', {
    method: 'POST',
    headers: { 'Content-Type': 'application/json', Authorization: 'Bearer ' + token },
    body: JSON.stringify({ x, y, color }),
  });
  const body = await res.json();
  assert.equal(res.status, 200, JSON.stringify(body));
  return body;
}

async function admin(b, method, p, body) {
  const res = await fetchTimeout(b + p, {
    method,
    headers: { 'Content-Type': 'application/json', Authorization: 'Bearer ' + ADMIN_TOKEN },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await res.text();
  let json = null;
  try { json = JSON.parse(text); } catch (_) { /* not JSON */ }
  return { status: res.status, body: json, text };
}

async function setCooldown(seconds) {
  const res = await fetchTimeout(base + '/api/v1/admin/cooldown', {
    method: 'POST',
    headers: { 'Content-Type': 'application/json', Authorization: 'Bearer ' + ADMIN_TOKEN },
    body: JSON.stringify({ seconds }),
  });
  assert.equal(res.status, 200, await res.text());
}

async function newContext(options = {}) {
  const context = await browser.newContext({ viewport: { width: 1024, height: 720 }, ...options });
  contexts.push(context);
  context.setDefaultTimeout(10000);
  if (WEB_FROM_DISK) {
    // The page too: a document fulfilled by the test has no loopback address space, so the
    // browser runs without Chromium's local network access checks in this mode (see before()).
    await context.route((url) => url.hostname === '127.0.0.1' && Object.hasOwn(WEB_FILES, url.pathname), (route) => {
      const file = WEB_FILES[new URL(route.request().url()).pathname];
      const type = file.endsWith('.js') ? 'text/javascript' : file.endsWith('.css') ? 'text/css' : 'text/html';
      return route.fulfill({ status: 200, contentType: type + '; charset=utf-8', body: fs.readFileSync(path.join(WEB_DIR, file)) });
    });
  }
  return context;
}

function watchPage(page, name) {
  const consoleLog = fs.createWriteStream(path.join(ARTIFACTS, `console-${name}.log`));
  page.on('console', (m) => consoleLog.write(`[${m.type()}] ${m.text()}\n`));
  page.on('pageerror', (err) => { pageErrors.push(`${name}: ${err.stack || err}`); consoleLog.write(`[pageerror] ${err.stack || err}\n`); });
  page.on('close', () => consoleLog.end());
}

// `init`: a script run in the page before its own; `setup(page)`: before the page loads (routes).
async function openPage(name, options = {}, { url = base + '/', init = null, setup = null } = {}) {
  const context = await newContext(options);
  if (init) await context.addInitScript(init);
  const page = await context.newPage();
  watchPage(page, name);
  if (setup) await setup(page);
  await page.goto(url, { timeout: 15000 });
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

async function assertPageMatchesServer(page, name) {
  await assertPageMatches(page, await serverSnapshot(), name, 10000);
}

// A pixel whose current color differs from `color` on the server, away from the others used.
let nextPixel = 3;
async function freshPixel(color, b = base) {
  const snap = await serverSnapshot(b);
  for (;;) {
    const i = nextPixel;
    nextPixel += 7;
    const x = i % snap.width;
    const y = Math.floor(i / snap.width) % snap.height;
    if (snap.px[y * snap.width + x] !== color) return { x, y };
  }
}

// Every placement the page sends (a WebSocket `place` message or POST /api/v1/place), into `into`;
// for openPage's `setup`.
function recordPlacements(into) {
  return (page) => {
    page.on('websocket', (ws) => ws.on('framesent', (f) => {
      if (typeof f.payload === 'string' && /"type":"place"/.test(f.payload)) into.push(JSON.parse(f.payload));
    }));
    page.on('request', (r) => {
      if (r.method() === 'POST' && new URL(r.url()).pathname === '/api/v1/place') into.push(JSON.parse(r.postData()));
    });
  };
}

// Right-clicks canvas pixel (x, y): the pixel info panel opens for it.
async function inspectPixel(page, x, y) {
  await page.evaluate(([x, y, z]) => window.placecast.centerOn(x, y, z), [x, y, ZOOM]);
  await nextFrame(page);
  const p = await page.evaluate(([x, y]) => window.placecast.screenPoint(x, y), [x, y]);
  await page.mouse.click(p.x, p.y, { button: 'right' });
  await page.waitForFunction(([x, y]) => {
    const s = window.placecast.inspected;
    return s && s.x === x && s.y === y && !/Looking it up/.test(document.getElementById('pixel-body').textContent);
  }, [x, y], { timeout: 10000, polling: 20 });
}

async function clickPixel(page, x, y, { touch = false } = {}) {
  await page.evaluate(([x, y, z]) => window.placecast.centerOn(x, y, z), [x, y, ZOOM]);
  await page.evaluate(() => new Promise((r) => requestAnimationFrame(() => r())));
  const p = await page.evaluate(([x, y]) => window.placecast.screenPoint(x, y), [x, y]);
  if (touch) await page.touchscreen.tap(p.x, p.y);
  else await page.mouse.click(p.x, p.y);
}

// Records every state and text the bottom line (#cooldown) shows, in window.__bottomLine, from
// before the page's script runs: states that last only a moment are caught too.
function recordBottomLine() {
  window.__bottomLine = [];
  const rec = () => {
    const el = document.getElementById('cooldown');
    if (!el) return;
    const s = el.dataset.state + ': ' + el.textContent;
    if (window.__bottomLine[window.__bottomLine.length - 1] !== s) window.__bottomLine.push(s);
  };
  new MutationObserver(rec).observe(document, { subtree: true, childList: true, attributes: true, characterData: true });
}

function zeroBits(buf) {
  let n = 0;
  for (const b of buf) {
    if (b) return n + Math.clz32(b) - 24;
    n += 8;
  }
  return n;
}

// Starts a server of its own for one test (fresh data dir, free port), stopped in after() at the
// latest.
async function launchExtra(name, opts = {}) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), `placecast-web-e2e-${name}-`));
  const srv = await launch({ name, port: await freePort(), dataDir: dir, ...opts });
  extraServers.push(srv);
  return srv;
}

// A token for user `name`, as an operator's sign-in service would mint it.
function mintToken(name) {
  return execFileSync(BIN, ['mint-token', name, '--secret', SECRET], { encoding: 'utf8' }).trim();
}

// Makes the page believe it is hidden (or shown again), as a switch to another tab would.
function setHidden(page, hidden) {
  return page.evaluate((h) => {
    Object.defineProperty(document, 'hidden', { configurable: true, get: () => h });
    Object.defineProperty(document, 'visibilityState', { configurable: true, get: () => (h ? 'hidden' : 'visible') });
    document.dispatchEvent(new Event('visibilitychange'));
  }, hidden);
}

function nextFrame(page) {
  return page.evaluate(() => new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(() => r()))));
}

// The color the *screen* shows at a viewport point (a screenshot of one pixel, decoded by the
// browser): what a person sees, DOM overlays included.
async function screenColor(page, x, y) {
  const png = await page.screenshot({ clip: { x: Math.floor(x), y: Math.floor(y), width: 1, height: 1 }, timeout: 10000 });
  return page.evaluate(async (b64) => {
    const img = new Image();
    img.src = 'data:image/png;base64,' + b64;
    await img.decode();
    const c = document.createElement('canvas');
    c.width = img.naturalWidth;
    c.height = img.naturalHeight;
    const g = c.getContext('2d');
    g.drawImage(img, 0, 0);
    return Array.from(g.getImageData(0, 0, 1, 1).data);
  }, png.toString('base64'));
}

function near(got, want, tol, what) {
  assert.ok(got.length === want.length && got.every((v, i) => Math.abs(v - want[i]) <= tol),
    `${what}: got ${JSON.stringify(got)}, want ${JSON.stringify(want)} (within ${tol})`);
}

async function shot(page, name) {
  await page.screenshot({ path: path.join(ARTIFACTS, name + '.png'), timeout: 10000 });
}

// ------------------------------------------------------------------ set-up and clean-up

before(async () => {
  prepare(CHROMIUM, () => [server, ...extraServers]);
  fs.mkdirSync(ARTIFACTS, { recursive: true });
  fs.rmSync(path.join(ARTIFACTS, 'server.log'), { force: true });
  dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'placecast-web-e2e-'));
  port = await freePort();
  base = `http://127.0.0.1:${port}`;
  await startServer();
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true, // playwright passes --headless and a fresh temporary --user-data-dir
    timeout: 30000,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
      // PLACECAST_WEB_FROM_DISK fulfills the page from web/: such a document is not in the
      // loopback address space and its WebSocket to 127.0.0.1 would be blocked.
      ...(WEB_FROM_DISK ? ['--disable-features=LocalNetworkAccessChecks'] : [])],
  });
});

after(async () => {
  for (const c of contexts) await c.close().catch(() => {});
  if (browser) await browser.close().catch(() => {});
  await stopServer();
  for (const srv of extraServers) {
    await stop(srv);
    fs.rmSync(srv.dataDir, { recursive: true, force: true });
  }
  if (dataDir) fs.rmSync(dataDir, { recursive: true, force: true });
});

// ------------------------------------------------------------------ scenarios
let pageA = null;
let pageB = null;

test('the server serves the client files with the right content types', async (t) => {
  for (const [p, type] of [['/', 'text/html'], ['/app.js', 'javascript'], ['/style.css', 'text/css']]) {
    const res = await fetchTimeout(base + p);
    assert.equal(res.status, 200, p);
    assert.match(res.headers.get('content-type') || '', new RegExp(type), `${p} content type`);
    const served = Buffer.from(await res.arrayBuffer());
    const disk = fs.readFileSync(path.join(WEB_DIR, WEB_FILES[p]));
    if (WEB_FROM_DISK) {
      if (!served.equals(disk)) t.diagnostic(`${p}: the binary's embedded copy differs from web/; the pages get web/ (PLACECAST_WEB_FROM_DISK=1)`);
    } else {
      assert.ok(served.equals(disk), `${p}: the binary serves this checkout's web/${WEB_FILES[p]} (the files are embedded: rebuild the server)`);
    }
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
  const context = await newContext({ viewport: { width: 800, height: 600 } });
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

test('proof-of-work sessions: the page solves the challenge in a worker and places a pixel', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'placecast-web-e2e-proof-'));
  const srv = await launch({ name: 'proof', port: await freePort(), dataDir: dir,
    extra: ['--anonymous-sessions', 'proof', '--pow-difficulty', '12'] });
  extraServers.push(srv);
  const opened = [];
  try {
    // The server's side of the contract.
    let res = await fetchTimeout(srv.base + '/api/v1/session', { method: 'POST' });
    assert.equal(res.status, 400);
    assert.equal((await res.json()).error.code, 'proof_required');
    const ch = await (await fetchTimeout(srv.base + '/api/v1/session/challenge')).json();
    assert.equal(ch.difficulty, 12);
    assert.equal(ch.algorithm, 'sha256-leading-zero-bits');

    // A first visit: POST (refused), GET a challenge, solve it in a worker, POST the proof.
    const calls = [];
    const page = await openPage('proof', {}, {
      url: srv.base + '/',
      init: recordBottomLine,
      setup: (p) => p.on('request', (r) => {
        const u = new URL(r.url());
        if (u.pathname.startsWith('/api/v1/session')) calls.push({ method: r.method(), path: u.pathname, body: r.postData() });
      }),
    });
    opened.push(page);
    await page.waitForFunction(() => window.placecast.sessionState === 'ready', null, { timeout: 30000, polling: 50 });
    const proof = await page.evaluate(() => window.placecast.lastProof);
    t.diagnostic('proof: ' + JSON.stringify(proof));
    assert.equal(proof.difficulty, 12);
    assert.ok(proof.workers >= 1, 'solved in a Web Worker');
    assert.equal(proof.verified, true, 'crypto.subtle (127.0.0.1 is a secure context) agrees');
    assert.ok(calls.some((c) => c.method === 'GET' && c.path === '/api/v1/session/challenge'), 'a challenge was fetched');
    const sent = calls.filter((c) => c.method === 'POST' && c.body).map((c) => JSON.parse(c.body));
    assert.equal(sent.length, 1, 'one proof sent: ' + JSON.stringify(calls));
    assert.match(sent[0].nonce, /^(0|[1-9]\d{0,19})$/, 'a canonical decimal nonce');
    assert.ok(zeroBits(crypto.createHash('sha256').update(sent[0].challenge + '.' + sent[0].nonce).digest()) >= 12,
      'the proof has 12 leading zero bits');
    const line = await page.evaluate(() => window.__bottomLine);
    assert.ok(line.some((l) => /^verifying: Verifying you're human/.test(l)), 'the page said it was verifying: ' + JSON.stringify(line));
    assert.equal(await page.locator('#cooldown').getAttribute('data-state'), 'ready');

    // The solver finds the smallest nonce (known answer), and so it does with several workers
    // racing over chunks (an answer past the first chunks) and with none (on the page).
    const known = await page.evaluate(() => window.placecast.solveProof('placecast-test', 12));
    assert.equal(known.nonce, '7100');
    assert.equal(known.verified, true);
    let far = null;
    for (let k = 0; !far; k++) {
      const c = 'placecast-order-' + k;
      for (let n = 0; ; n++) {
        if (zeroBits(crypto.createHash('sha256').update(c + '.' + n).digest()) >= 16) {
          if (n > 3 * 32768) far = { c, n };
          break;
        }
      }
    }
    for (const workers of [3, 0]) {
      const r = await page.evaluate(([c, w]) => window.placecast.solveProof(c, 16, w), [far.c, workers]);
      assert.equal(r.nonce, String(far.n), `${far.c} with ${workers} workers`);
      assert.equal(r.workers, workers);
    }

    // The session places a pixel.
    const { x, y } = await freshPixel(6, srv.base);
    await page.locator('#palette .swatch[data-index="6"]').click();
    await clickPixel(page, x, y);
    await until('the pixel on the proof server', async () => {
      const snap = await serverSnapshot(srv.base);
      return snap.px[y * snap.width + x] === 6;
    });
    await page.waitForFunction(([x, y]) => window.placecast.pixel(x, y) === 6, [x, y], { timeout: 5000, polling: 20 });
    await page.waitForFunction(() => document.getElementById('cooldown').dataset.state === 'cooling', null, { timeout: 5000 });
    await shot(page, 'proof-placed');

    // A refused proof (409 challenge_used) gets a new challenge, and 429 session_rate_limited is
    // waited out with its retry time shown. (The refusals are injected; the rest is the server.)
    const calls2 = [];
    let posts = 0;
    const retry = await openPage('proof-retry', {}, {
      url: srv.base + '/',
      init: recordBottomLine,
      setup: async (p) => {
        p.on('request', (r) => { if (new URL(r.url()).pathname === '/api/v1/session/challenge') calls2.push(r.url()); });
        await p.route((u) => u.pathname === '/api/v1/session', (route) => {
          if (route.request().method() !== 'POST' || !route.request().postData()) return route.continue();
          posts++;
          const json = (status, code, extra = {}) => route.fulfill({ status, contentType: 'application/json',
            headers: extra.retry_after_ms ? { 'Retry-After': String(Math.ceil(extra.retry_after_ms / 1000)) } : {},
            body: JSON.stringify({ error: { code, message: 'injected by the test', ...extra } }) });
          if (posts === 1) return json(429, 'session_rate_limited', { retry_after_ms: 2500 });
          if (posts === 2) return json(409, 'challenge_used');
          return route.continue();
        });
      },
    });
    opened.push(retry);
    await retry.waitForFunction(() => window.placecast.sessionState === 'ready', null, { timeout: 30000, polling: 50 });
    assert.equal(posts, 3, 'proof, proof again after the wait, a new proof after challenge_used');
    assert.equal(calls2.length, 2, 'a new challenge after challenge_used (not after the rate limit)');
    const line2 = await retry.evaluate(() => window.__bottomLine);
    assert.ok(line2.some((l) => /^waiting: .*your session starts in \d s$/.test(l)), 'the wait was shown: ' + JSON.stringify(line2));
    assert.equal(await retry.evaluate(() => window.placecast.proofs), 2);

    // Anonymous sessions off: the page says to sign in; a sign-in service's token in the address
    // fragment is taken (and removed from the address bar), and places pixels.
    const limits = await admin(srv.base, 'POST', '/api/v1/admin/limits', { anonymous_sessions: 'off' });
    assert.equal(limits.status, 200, limits.text);
    assert.equal(limits.body.anonymous_sessions, 'off');
    const off = await openPage('sessions-off', {}, { url: srv.base + '/' });
    opened.push(off);
    await off.waitForFunction(() => document.getElementById('cooldown').dataset.state === 'signin', null, { timeout: 10000, polling: 50 });
    assert.equal(await off.locator('#cooldown').textContent(), 'Sign in to place pixels');
    const p2 = await freshPixel(8, srv.base);
    await off.locator('#palette .swatch[data-index="8"]').click();
    await clickPixel(off, p2.x, p2.y);
    const msg = off.locator('#message');
    await msg.waitFor({ state: 'visible', timeout: 5000 });
    assert.match(await msg.textContent(), /doesn't start anonymous sessions: sign in/);
    const token = execFileSync(BIN, ['mint-token', 'e2e-signed-in', '--secret', SECRET], { encoding: 'utf8' }).trim();
    // A same-page navigation (hashchange) here; a sign-in service's redirect loads the page anew.
    await off.goto(srv.base + '/#token=' + encodeURIComponent(token), { timeout: 15000 });
    await off.waitForFunction(() => window.placecast.user === 'e2e-signed-in', null, { timeout: 5000, polling: 20 });
    await waitLive(off);
    // The page may already have written its view (#x=&y=&zoom=) there: what matters is the token.
    const hash = await off.evaluate(() => location.hash);
    assert.ok(!hash.includes('token'), `the token is removed from the address: ${hash}`);
    assert.equal(await off.evaluate(() => window.placecast.user), 'e2e-signed-in');
    await off.locator('#palette .swatch[data-index="8"]').click();
    await clickPixel(off, p2.x, p2.y);
    await off.waitForFunction(() => document.getElementById('cooldown').dataset.state === 'cooling', null, { timeout: 5000 });
    await until('the signed-in pixel on the server', async () => {
      const snap = await serverSnapshot(srv.base);
      return snap.px[p2.y * snap.width + p2.x] === 8;
    });
    await off.waitForFunction(([x, y]) => window.placecast.pixel(x, y) === 8, [p2.x, p2.y], { timeout: 5000, polling: 20 });
  } finally {
    for (const p of opened) await p.context().close().catch(() => {});
    await stop(srv);
  }
});

test('the address carries the view: a link opens that spot, panning and zooming update it', async () => {
  const page = await openPage('url', {}, { url: base + '/#x=123&y=45&zoom=12' });
  const centerOf = () => page.evaluate(() => {
    const r = document.getElementById('view').getBoundingClientRect();
    return { x: r.left + r.width / 2, y: r.top + r.height / 2 };
  });
  const c = await centerOf();
  assert.equal(await page.evaluate(() => window.placecast.scale), 12, 'zoom from the address');
  const p = await page.evaluate(() => window.placecast.screenPoint(123, 45));
  assert.ok(Math.abs(p.x - c.x) <= 1 && Math.abs(p.y - c.y) <= 1, `pixel (123, 45) is centered: ${JSON.stringify(p)} vs ${JSON.stringify(c)}`);
  assert.equal(await page.evaluate(() => location.hash), '#x=123&y=45&zoom=12');

  // A mouse drag of (-120, -60) CSS px at zoom 12 moves the center by (10, 5) pixels.
  const v0 = await page.evaluate(() => window.placecast.version);
  await page.mouse.move(c.x, c.y);
  await page.mouse.down();
  await page.mouse.move(c.x - 120, c.y - 60, { steps: 8 });
  await page.mouse.up();
  await until('the address after the drag', async () => (await page.evaluate(() => location.hash)) === '#x=133&y=50&zoom=12', 5000);
  // Zooming with the wheel at the center keeps the pixel there and updates the zoom.
  await page.mouse.move(c.x, c.y);
  await page.mouse.wheel(0, -240);
  const zoomed = await until('the address after the wheel', async () => {
    const h = await page.evaluate(() => location.hash);
    const m = /^#x=133&y=50&zoom=([\d.]+)$/.exec(h);
    return m && Number(m[1]) > 12 ? Number(m[1]) : null;
  }, 5000);
  const s = await page.evaluate(() => window.placecast.scale);
  assert.ok(Math.abs(s - zoomed) / s < 0.01, `the address's zoom ${zoomed} is the view's ${s}`);
  assert.equal(await page.evaluate(() => window.placecast.version), v0, 'panning and zooming placed nothing');

  // Changing the fragment in the same page moves the view there.
  await page.evaluate(() => { location.hash = '#x=300&y=200&zoom=4'; });
  await page.waitForFunction(() => window.placecast.scale === 4, null, { timeout: 5000, polling: 20 });
  const q = await page.evaluate(() => window.placecast.screenPoint(300, 200));
  assert.ok(Math.abs(q.x - c.x) <= 1 && Math.abs(q.y - c.y) <= 1, 'the new spot is centered');

  // A link reopens the same spot.
  const link = await page.evaluate(() => location.href);
  const again = await openPage('url-again', {}, { url: link });
  assert.equal(await again.evaluate(() => window.placecast.scale), 4);
  const q2 = await again.evaluate(() => window.placecast.screenPoint(300, 200));
  assert.ok(Math.abs(q2.x - c.x) <= 1 && Math.abs(q2.y - c.y) <= 1, 'the link opens the spot');

  // Invalid values are ignored: the page shows the whole canvas as without them.
  const bad = await openPage('url-bad', {}, { url: base + '/#x=abc&y=12&zoom=-3' });
  const fit = await bad.evaluate(() => {
    const r = document.getElementById('view').getBoundingClientRect();
    return Math.min(r.width / window.placecast.width, r.height / window.placecast.height) * 0.96;
  });
  assert.ok(Math.abs(await bad.evaluate(() => window.placecast.scale) - fit) < 0.01, 'fitted view');
  const off = await openPage('url-off', {}, { url: base + '/#x=5&y=99999&zoom=zz' });
  assert.ok(Math.abs(await off.evaluate(() => window.placecast.scale) - fit) < 0.01, 'a pixel off the canvas is ignored');
  for (const p of [page, again, bad, off]) await p.context().close();
});

test('template overlay: an image at x, y with its opacity follows pan and zoom; settings kept; a broken URL says so', async () => {
  const page = await openPage('template');
  // A 3x2 PNG: opaque red at (0, 0), opaque blue elsewhere, made by the browser.
  const dataUrl = await page.evaluate(() => {
    const c = document.createElement('canvas');
    c.width = 3;
    c.height = 2;
    const g = c.getContext('2d');
    g.fillStyle = '#0000ff';
    g.fillRect(0, 0, 3, 2);
    g.fillStyle = '#ff0000';
    g.fillRect(0, 0, 1, 1);
    return c.toDataURL('image/png');
  });
  const TX = 210;
  const TY = 130;
  // A link with a template (loaded afresh: a fragment change alone would be a same-page navigation).
  await page.goto(base + `/#x=${TX + 1}&y=${TY + 1}&zoom=16&template=${encodeURIComponent(dataUrl)}&tx=${TX}&ty=${TY}&to=0.5`, { timeout: 15000 });
  await page.reload({ timeout: 15000 });
  await waitLive(page);
  await page.waitForFunction(() => window.placecast.template.state === 'ok', null, { timeout: 5000, polling: 20 });
  const tpl = await page.evaluate(() => window.placecast.template);
  assert.deepEqual([tpl.width, tpl.height, tpl.x, tpl.y, tpl.opacity, tpl.show], [3, 2, TX, TY, 0.5, true]);

  // Where the overlay is drawn: its corner on canvas pixel (TX, TY), 16 CSS px per image pixel.
  const check = async (what) => {
    await nextFrame(page);
    const g = await page.evaluate(([x, y]) => {
      const img = document.getElementById('template-img');
      const cs = getComputedStyle(img);
      return { r: img.getBoundingClientRect().toJSON(), visible: !img.hidden, opacity: cs.opacity, rendering: cs.imageRendering,
        p: window.placecast.screenPoint(x, y), s: window.placecast.scale };
    }, [TX, TY]);
    assert.ok(g.visible, `${what}: shown`);
    assert.ok(Math.abs(g.r.left - (g.p.x - g.s / 2)) < 0.5 && Math.abs(g.r.top - (g.p.y - g.s / 2)) < 0.5,
      `${what}: the corner sits on pixel (${TX}, ${TY}): ${JSON.stringify(g)}`);
    assert.ok(Math.abs(g.r.width - 3 * g.s) < 0.5 && Math.abs(g.r.height - 2 * g.s) < 0.5, `${what}: one image pixel per canvas pixel`);
    assert.equal(g.rendering, 'pixelated');
    return g;
  };
  let g = await check('from the address');
  assert.equal(g.opacity, '0.5');
  // What the screen shows at canvas pixel (TX, TY): red at half opacity over the canvas' color.
  const palette = await page.evaluate(() => window.placecast.palette);
  const under = hexToRgba(palette[await page.evaluate(([x, y]) => window.placecast.pixel(x, y), [TX, TY])]);
  const blend = (over, a) => under.map((u, i) => (i === 3 ? 255 : Math.round(over[i] * a + u * (1 - a))));
  let sp = await page.evaluate(([x, y]) => window.placecast.screenPoint(x, y), [TX, TY]);
  near(await screenColor(page, sp.x, sp.y), blend([255, 0, 0], 0.5), 4, 'red at 0.5 over the canvas');
  sp = await page.evaluate(([x, y]) => window.placecast.screenPoint(x, y), [TX + 2, TY + 1]);
  near(await screenColor(page, sp.x, sp.y), blend([0, 0, 255], 0.5), 4, 'blue at 0.5 over the canvas');
  await shot(page, 'template');

  // It follows a drag and a wheel zoom.
  await page.mouse.move(500, 400);
  await page.mouse.down();
  await page.mouse.move(430, 350, { steps: 6 });
  await page.mouse.up();
  await check('after a drag');
  await page.mouse.wheel(0, 300);
  await page.waitForFunction(() => window.placecast.scale < 16, null, { timeout: 3000, polling: 20 });
  await check('after zooming out');

  // The settings are kept: the page without the template in its address shows it again.
  const stored = await page.evaluate(() => JSON.parse(localStorage.getItem('placecast.template')));
  assert.deepEqual(stored, { url: dataUrl, x: TX, y: TY, opacity: 0.5, show: true });
  await page.goto(base + `/#x=${TX}&y=${TY}&zoom=8`, { timeout: 15000 });
  await page.reload({ timeout: 15000 });
  await waitLive(page);
  assert.equal(await page.evaluate(() => window.placecast.scale), 8);
  await page.waitForFunction(() => window.placecast.template.state === 'ok', null, { timeout: 5000, polling: 20 });
  await check('after a reload');

  // The panel: opacity with the slider (keyboard), hide and show, move it.
  await page.locator('#tool-template').click();
  await page.locator('#template-panel').waitFor({ state: 'visible' });
  assert.equal(await page.locator('#template-url').inputValue(), dataUrl);
  await page.locator('#template-opacity').focus();
  await page.keyboard.press('ArrowRight');
  await page.keyboard.press('ArrowRight');
  await page.waitForFunction(() => window.placecast.template.opacity === 0.6, null, { timeout: 3000, polling: 20 });
  g = await check('opacity 0.6');
  assert.equal(g.opacity, '0.6');
  assert.equal(await page.locator('#template-opacity-out').textContent(), '0.60');
  await page.locator('#template-show').uncheck();
  await page.waitForFunction(() => document.getElementById('template-img').hidden, null, { timeout: 3000, polling: 20 });
  await page.locator('#template-show').check();
  await page.locator('#template-x').fill(String(TX - 5));
  await page.locator('#template-x').press('Enter');
  await page.waitForFunction((x) => window.placecast.template.x === x, TX - 5, { timeout: 3000, polling: 20 });
  const moved = await page.evaluate(() => ({ r: document.getElementById('template-img').getBoundingClientRect().left, p: window.placecast.screenPoint(205, 0).x, s: window.placecast.scale }));
  assert.ok(Math.abs(moved.r - (moved.p - moved.s / 2)) < 0.5, 'moved to the new x');
  assert.deepEqual(await page.evaluate(() => JSON.parse(localStorage.getItem('placecast.template'))),
    { url: dataUrl, x: TX - 5, y: TY, opacity: 0.6, show: true });

  // A URL that does not load: a clear message, no overlay.
  await page.locator('#template-url').fill(base + '/no-such-template.png');
  await page.locator('#template-url').press('Enter');
  await page.waitForFunction(() => window.placecast.template.state === 'error', null, { timeout: 5000, polling: 20 });
  assert.match(await page.locator('#template-status').textContent(), /template image couldn't be loaded/);
  assert.equal(await page.evaluate(() => document.getElementById('template-img').hidden), true, 'no overlay');
  await shot(page, 'template-broken');
  // The same from a link (no panel open): the page says it in its message line.
  await page.goto(base + `/#template=${encodeURIComponent(base + '/no-such-template.png')}&tx=1&ty=2`, { timeout: 15000 });
  await page.reload({ timeout: 15000 });
  await waitLive(page);
  await page.locator('#message').waitFor({ state: 'visible', timeout: 5000 });
  assert.match(await page.locator('#message').textContent(), /template image couldn't be loaded/);
  assert.equal(await page.evaluate(() => window.placecast.template.state), 'error');
  assert.equal(await page.evaluate(() => document.getElementById('template-img').hidden), true, 'no overlay');
  await page.locator('#tool-template').click();
  // Removed: nothing stored.
  await page.locator('#template-clear').click();
  assert.equal(await page.evaluate(() => localStorage.getItem('placecast.template')), null);
  await page.context().close();
});

test('cooldown notification: opt-in, a notification when the cooldown ends in a hidden tab only', async () => {
  const srv = await launchExtra('notify', { cooldown: 2 });
  const context = await newContext();
  await context.grantPermissions(['notifications'], { origin: srv.base });
  // Records what the page asks of the browser's Notification API (the real one still runs).
  await context.addInitScript(() => {
    const Real = window.Notification;
    window.__notes = [];
    function Recorded(title, options) {
      window.__notes.push({ title, body: options && options.body, hidden: document.hidden, at: Date.now() });
      return new Real(title, options);
    }
    Recorded.requestPermission = (...a) => Real.requestPermission(...a);
    Object.defineProperty(Recorded, 'permission', { get: () => Real.permission });
    Recorded.prototype = Real.prototype;
    window.Notification = Recorded;
  });
  try {
    const page = await context.newPage();
    watchPage(page, 'notify');
    await page.goto(srv.base + '/', { timeout: 15000 });
    await waitLive(page);
    assert.equal(await page.locator('#notify').isChecked(), false, 'off until asked for');
    await page.locator('#notify').check();
    await page.waitForFunction(() => window.placecast.notifyOn, null, { timeout: 5000, polling: 20 });
    assert.equal(await page.evaluate(() => localStorage.getItem('placecast.notify')), '1');

    // Visible tab: the in-page line says it, no notification.
    const place = async (color) => {
      const { x, y } = await freshPixel(color, srv.base);
      await page.locator(`#palette .swatch[data-index="${color}"]`).click();
      await clickPixel(page, x, y);
      await page.waitForFunction(() => document.getElementById('cooldown').dataset.state === 'cooling', null, { timeout: 5000, polling: 20 });
      return Date.now();
    };
    await place(2);
    await page.waitForFunction(() => document.getElementById('cooldown').dataset.state === 'ready', null, { timeout: 10000, polling: 50 });

    // Hidden tab: a notification once the cooldown is over (and none for the first one, above).
    await until('the cooldown to be over', async () => (await page.evaluate(() => window.placecast.cooldownRemainingMs)) === 0, 5000);
    const placedAt = await place(3);
    const left = await page.evaluate(() => window.placecast.cooldownRemainingMs);
    await setHidden(page, true);
    await page.waitForFunction(() => window.__notes.length > 0, null, { timeout: 15000, polling: 50 });
    const notes = await page.evaluate(() => window.__notes);
    assert.equal(notes.length, 1, JSON.stringify(notes));
    assert.equal(notes[0].title, 'You can place a pixel again');
    assert.equal(notes[0].hidden, true);
    assert.ok(notes[0].at >= placedAt + left - 1500, `not before the cooldown's end (${notes[0].at - placedAt} ms after placing, ${left} ms left then)`);
    await page.waitForFunction(() => window.placecast.notifications === 1, null, { timeout: 3000, polling: 20 });
    await setHidden(page, false);

    // The choice is remembered; unticking it is remembered too.
    await page.reload({ timeout: 15000 });
    await waitLive(page);
    assert.equal(await page.locator('#notify').isChecked(), true, 'still on after a reload');
    await page.locator('#notify').uncheck();
    assert.equal(await page.evaluate(() => localStorage.getItem('placecast.notify')), '0');
    assert.equal(await page.evaluate(() => window.placecast.notifyOn), false);
  } finally {
    await context.close().catch(() => {});
    await stop(srv);
  }
});

test('pixel info: right-click, long press or inspect mode shows who placed a pixel, when, and its last edits', async (t) => {
  const sent = [];
  const page = await openPage('inspect', {}, { setup: recordPlacements(sent) });
  const palette = await page.evaluate(() => window.placecast.palette);
  const { x, y } = await freshPixel(6);
  await page.locator('#palette .swatch[data-index="6"]').click();
  await clickPixel(page, x, y);
  await page.waitForFunction(() => document.getElementById('cooldown').dataset.state === 'cooling', null, { timeout: 5000, polling: 20 });
  const me = await page.evaluate(() => window.placecast.user);
  assert.ok(me, 'the page has a user');
  // The history index follows the log (the applier writes it): wait until it has the edit.
  const lookup = async (n) => (await fetchTimeout(`${base}/api/v1/pixel?x=${x}&y=${y}${n ? '&history=' + n : ''}`)).json();
  const server = await until('the pixel in the history index', async () => {
    const b = await lookup();
    return b.last && b.last.color === 6 ? b : null;
  });
  t.diagnostic('GET /api/v1/pixel: ' + JSON.stringify(server));
  assert.equal(server.last.user, me, 'the server knows who placed it');
  assert.equal(server.last.color, 6);
  const v1 = server.last.version;

  // Right-click: the panel, and nothing placed.
  assert.equal(sent.length, 1, 'the placement was sent');
  await inspectPixel(page, x, y);
  const panel = page.locator('#pixel-panel');
  assert.equal(await page.locator('#pixel-title').textContent(), `Pixel ${x}, ${y}`);
  assert.equal(await panel.locator('.pixel-by .pixel-user').textContent(), me);
  assert.equal(await panel.locator('.pixel-version').textContent(), `version ${v1}`);
  assert.equal(await panel.locator('.pixel-color').textContent(), palette[6]);
  const time = panel.locator('.pixel-when time');
  assert.match(await time.textContent(), /^(just now|\d+ s ago)$/);
  assert.equal(await time.getAttribute('title'), await page.evaluate((ts) => new Date(ts).toLocaleString(), server.last.ts_ms), 'the local time on hover');
  assert.equal(sent.length, 1, 'inspecting sent no placement');
  await shot(page, 'pixel-info');

  // A second user places on the same pixel: the history lists both, newest first.
  const bob = await placeHttp(mintToken('e2e-bob'), x, y, 9);
  await page.waitForFunction(([x, y]) => window.placecast.pixel(x, y) === 9, [x, y], { timeout: 5000, polling: 20 });
  await until("bob's edit in the history index", async () => (await lookup()).last.version === bob.version);
  await page.locator('#pixel-history-toggle').click();
  await page.waitForFunction(() => document.querySelectorAll('#pixel-history li[data-version]').length >= 2, null, { timeout: 10000, polling: 20 });
  const items = await page.locator('#pixel-history li[data-version]').evaluateAll((lis) => lis.map((li) => ({
    version: Number(li.dataset.version), user: li.querySelector('.pixel-user').textContent, color: li.querySelector('.pixel-swatch').title })));
  assert.deepEqual(items.slice(0, 2), [
    { version: bob.version, user: 'e2e-bob', color: palette[9] },
    { version: v1, user: me, color: palette[6] },
  ]);
  assert.ok(items.length <= 10, 'at most 10 edits');
  assert.equal(await panel.locator('.pixel-by .pixel-user').textContent(), 'e2e-bob', 'the panel shows the newest edit');
  await shot(page, 'pixel-history');
  // The next pixel inspected keeps the list open.
  await inspectPixel(page, x + 1, y);
  await page.waitForFunction(() => !/Loading/.test(document.getElementById('pixel-history').textContent), null, { timeout: 10000, polling: 20 });
  assert.equal(await page.locator('#pixel-history').isVisible(), true);
  await page.keyboard.press('Escape');
  await panel.waitFor({ state: 'hidden', timeout: 3000 });

  // Touch: a long press inspects and places nothing; a tap in inspect mode inspects too.
  const sentPhone = [];
  const phone = await openPage('inspect-phone', { viewport: { width: 390, height: 844 }, deviceScaleFactor: 2, isMobile: true, hasTouch: true },
    { setup: recordPlacements(sentPhone) });
  const q = await freshPixel(4);
  await phone.evaluate(([x, y, z]) => window.placecast.centerOn(x, y, z), [q.x, q.y, ZOOM]);
  await nextFrame(phone);
  const pt = await phone.evaluate(([x, y]) => window.placecast.screenPoint(x, y), [q.x, q.y]);
  const cdp = await phone.context().newCDPSession(phone);
  const before = await phone.evaluate(([x, y]) => window.placecast.pixel(x, y), [q.x, q.y]);
  await cdp.send('Input.dispatchTouchEvent', { type: 'touchStart', touchPoints: [{ x: pt.x, y: pt.y, id: 1 }] });
  await phone.waitForFunction(([x, y]) => { const s = window.placecast.inspected; return s && s.x === x && s.y === y; }, [q.x, q.y], { timeout: 5000, polling: 20 });
  await cdp.send('Input.dispatchTouchEvent', { type: 'touchEnd', touchPoints: [] });
  await phone.locator('#pixel-panel').waitFor({ state: 'visible' });
  await phone.locator('#tool-inspect').tap();
  assert.equal(await phone.evaluate(() => window.placecast.inspectMode), true);
  await clickPixel(phone, q.x + 1, q.y, { touch: true });
  await phone.waitForFunction(([x, y]) => { const s = window.placecast.inspected; return s && s.x === x && s.y === y; }, [q.x + 1, q.y], { timeout: 5000, polling: 20 });
  await shot(phone, 'pixel-info-phone');
  assert.equal(await phone.locator('#cooldown').getAttribute('data-state'), 'ready', 'nothing placed: no cooldown');
  assert.equal(await phone.evaluate(([x, y]) => window.placecast.pixel(x, y), [q.x, q.y]), before, 'nothing placed');
  assert.deepEqual(sentPhone, [], 'no placement sent');
  // Inspect mode off again: a tap places as before.
  await phone.locator('#tool-inspect').tap();
  await phone.locator('#palette .swatch[data-index="4"]').tap();
  await clickPixel(phone, q.x, q.y, { touch: true });
  await phone.waitForFunction(([x, y]) => window.placecast.pixel(x, y) === 4, [q.x, q.y], { timeout: 5000, polling: 20 });
  assert.deepEqual(sentPhone.map((m) => [m.x, m.y, m.color]), [[q.x, q.y, 4]]);
  await page.context().close();
  await phone.context().close();

  // A server with lookups turned off says so.
  const off = await launchExtra('lookup-off', { extra: ['--pixel-lookup', 'off'] });
  try {
    const p3 = await openPage('lookup-off', {}, { url: off.base + '/' });
    await inspectPixel(p3, 5, 5);
    assert.equal(await p3.locator('#pixel-note').textContent(), 'Lookups are off on this server.');
    assert.equal(await p3.locator('#pixel-history-toggle').isVisible(), false);
    await p3.context().close();
  } finally {
    await stop(off);
  }
});

test('history slider: an earlier version is shown, placing is off, live edits keep coming, Live returns at once', async (t) => {
  const srv = await launchExtra('history', { cooldown: 0, extra: ['--catchups-per-addr-per-min', '0'] });
  try {
    const token = await newSession(srv.base);
    const edits = [[10, 10, 3], [10, 10, 5], [11, 10, 7]];
    const versions = [];
    for (const [x, y, c] of edits) versions.push((await placeHttp(token, x, y, c, srv.base)).version);
    const info = await until('the edits in the history index', async () => {
      const b = await (await fetchTimeout(srv.base + '/api/v1/history/info')).json();
      return b.version === versions[2] ? b : null;
    });
    t.diagnostic('history/info: ' + JSON.stringify(info));

    // Every canvas request of the page, and how many were in flight at once.
    const atRequests = [];
    let inflight = 0;
    let maxInflight = 0;
    let injected = 0;
    const sent = [];
    const page = await openPage('history', {}, {
      url: srv.base + '/#x=11&y=10&zoom=16',
      setup: async (p) => {
        recordPlacements(sent)(p);
        const isAt = (r) => /\/api\/v1\/canvas\?at=/.test(r.url());
        p.on('request', (r) => { if (isAt(r)) { atRequests.push(r.url()); maxInflight = Math.max(maxInflight, ++inflight); } });
        const done = (r) => { if (isAt(r)) inflight--; };
        p.on('requestfinished', done);
        p.on('requestfailed', done);
        // The first past canvas is refused as busy (as a loaded server would): retried after
        // its Retry-After. (Injected; every other answer is the server's.)
        await p.route((u) => u.pathname === '/api/v1/canvas' && u.searchParams.has('at'), (route) => {
          if (injected++ === 0) {
            return route.fulfill({ status: 503, contentType: 'application/json', headers: { 'Retry-After': '1' },
              body: JSON.stringify({ error: { code: 'history_busy', message: 'injected by the test' } }) });
          }
          return route.continue();
        });
      },
    });
    const palette = await page.evaluate(() => window.placecast.palette);
    const rgba = (c) => hexToRgba(palette[c]);
    await waitVisiblePixel(page, 10, 10, rgba(5), 5000);
    const loads0 = await page.evaluate(() => window.placecast.snapshotLoads);

    await page.locator('#tool-history').click();
    await page.waitForFunction((v) => !document.getElementById('history-range').disabled && window.placecast.historyView.max === v,
      versions[2], { timeout: 10000, polling: 20 });
    assert.match(await page.locator('#history-label').textContent(), new RegExp(`^Live: version ${versions[2]}`));
    // Back two versions with the keyboard: the canvas as it was after the first edit.
    await page.locator('#history-range').focus();
    await page.keyboard.press('ArrowLeft');
    await page.keyboard.press('ArrowLeft');
    await page.waitForFunction((v) => { const h = window.placecast.historyView; return h.active && h.version === v && !h.loading; },
      versions[0], { timeout: 15000, polling: 20 });
    await waitVisiblePixel(page, 10, 10, rgba(3));
    await waitVisiblePixel(page, 11, 10, rgba(0));
    assert.equal(await page.evaluate(() => window.placecast.shownPixel(10, 10)), 3);
    assert.equal(await page.evaluate(() => window.placecast.pixel(10, 10)), 5, 'the live model is untouched');
    const hv = await page.evaluate(() => window.placecast.historyView);
    t.diagnostic(`history view: ${JSON.stringify(hv)}; canvas requests: ${atRequests.length}, at most ${maxInflight} at once`);
    assert.ok(hv.timeMs >= info.first_ts_ms && hv.timeMs <= Date.now(), 'the time of the version');
    const label = await page.locator('#history-label').textContent();
    assert.ok(label.startsWith(`Version ${versions[0]} of ${versions[2]} · ${await page.evaluate((ts) => new Date(ts).toLocaleString(), hv.timeMs)}`), label);
    assert.equal(maxInflight, 1, 'one canvas request at a time');
    assert.ok(injected >= 2, 'the busy answer was retried');
    assert.ok(atRequests.every((u) => /at=\d+$/.test(u)));
    assert.equal(await page.locator('#cooldown').getAttribute('data-state'), 'history');
    await shot(page, 'history-view');

    // Placing is off: a click says so and nothing reaches the server.
    await page.locator('#palette .swatch[data-index="8"]').click();
    await clickPixel(page, 12, 10);
    await page.locator('#message').waitFor({ state: 'visible', timeout: 3000 });
    assert.match(await page.locator('#message').textContent(), /as it was at version \d+\. Press Live to place pixels/);
    // A live edit meanwhile reaches the live model (the socket stays up), not the picture.
    const live = await placeHttp(token, 12, 10, 9, srv.base);
    await page.waitForFunction(() => window.placecast.pixel(12, 10) === 9, null, { timeout: 5000, polling: 20 });
    assert.equal(await page.evaluate(() => window.placecast.status), 'live');
    await waitVisiblePixel(page, 12, 10, rgba(0));
    await page.waitForFunction((v) => window.placecast.historyView.max === v, live.version, { timeout: 3000, polling: 20 });
    assert.equal(live.version, versions[2] + 1, 'the click in the history view placed nothing');
    assert.deepEqual(sent, [], 'no placement sent from the history view');

    // Live: the current canvas at once (no reload), the live edit included, placing back on.
    await page.locator('#history-live').click();
    await waitVisiblePixel(page, 12, 10, rgba(9));
    await waitVisiblePixel(page, 10, 10, rgba(5));
    await waitVisiblePixel(page, 11, 10, rgba(7));
    const after = await page.evaluate(() => ({ h: window.placecast.historyView, loads: window.placecast.snapshotLoads }));
    assert.equal(after.h.active, false);
    assert.equal(after.loads, loads0, 'no snapshot reload');
    assert.equal(await page.locator('#cooldown').getAttribute('data-state'), 'ready');
    await clickPixel(page, 13, 10);
    await until('the placement after Live', async () => { const s = await serverSnapshot(srv.base); return s.px[10 * s.width + 13] === 8; });
    await shot(page, 'history-live');

    // The slider's far end: version 0, the empty canvas; closing the panel is Live too.
    await page.locator('#history-range').focus();
    await page.keyboard.press('Home');
    await page.waitForFunction(() => { const h = window.placecast.historyView; return h.active && h.version === h.min && !h.loading; },
      null, { timeout: 15000, polling: 20 });
    await waitVisiblePixel(page, 11, 10, rgba(0));
    await page.locator('#history-panel .close').click();
    await waitVisiblePixel(page, 11, 10, rgba(7));
    assert.equal(await page.evaluate(() => window.placecast.historyView.open), false);
    await page.context().close();
  } finally {
    await stop(srv);
  }
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
  t.diagnostic('closes seen (SIGTERM drains: 1012, then failed attempts while down): ' + JSON.stringify(
    await Promise.all([pageA, pageB].map((p) => p.evaluate(() => window.placecast.closes.slice(-6).map((c) => c.code))))));
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

test('a drained server: the pages get the reconnect hint and 1012, and come back with since', async (t) => {
  const pages = [['A', pageA], ['B', pageB]];
  await Promise.all(pages.map(([, p]) => waitLive(p)));
  const opens = new Map(pages.map(([n]) => [n, []]));
  const listeners = pages.map(([n, p]) => {
    const f = (ws) => opens.get(n).push({ url: ws.url(), at: Date.now() });
    p.on('websocket', f);
    return () => p.off('websocket', f);
  });
  try {
    const closes0 = new Map(await Promise.all(pages.map(async ([n, p]) => [n, (await p.evaluate(() => window.placecast.closes)).length])));
    const v0 = (await serverSnapshot()).version;
    const proc = server.proc;
    const gone = exited(proc);

    const res = await admin(base, 'POST', '/api/v1/admin/drain');
    assert.equal(res.status, 202, res.text);
    assert.equal(res.body.draining, true);
    t.diagnostic('drain: ' + res.text);

    // Each page is told to reconnect, then closed with 1012, and waits as it was told.
    const drained = {};
    for (const [n, p] of pages) {
      drained[n] = await until(`${n}: a 1012 close`, async () => {
        const cs = (await p.evaluate(() => window.placecast.closes)).slice(closes0.get(n));
        return cs.find((c) => c.code === 1012);
      }, 20000);
      const c = drained[n];
      assert.ok(c.hint, `${n}: the reconnect message came before the close`);
      assert.ok(c.delayMs >= c.hint.afterMs && c.delayMs <= c.hint.afterMs + c.hint.jitterMs,
        `${n}: waited ${c.delayMs} ms for a hint of ${JSON.stringify(c.hint)}`);
    }
    t.diagnostic('closes: ' + JSON.stringify(drained));

    // The drained process exits once its clients are gone (or after grace + spread + 5 s).
    await Promise.race([gone, sleep(30000).then(() => { throw new Error('the drained server did not exit:\n' + server.log.join('')); })]);
    t.diagnostic(`the drained server exited with ${proc.exitCode === null ? proc.signalCode : proc.exitCode}`);
    server = null;

    // A new process on the same data dir and port: the pages come back live.
    await startServer();
    for (const [, p] of pages) await waitLive(p, 45000);
    for (const [n] of pages) {
      const c = drained[n];
      const next = opens.get(n).find((o) => o.at >= c.at);
      assert.ok(next, `${n}: reconnected after the 1012`);
      assert.match(next.url, new RegExp(`/ws\\?since=${v0}$`), `${n}: the reconnection catches up with since=<its version>`);
      assert.ok(next.at >= c.at + c.delayMs - 5, `${n}: reconnected ${next.at - c.at} ms after the close, asked to wait ${c.delayMs} ms`);
    }

    // Edits after the restart reach both pages, which converge with the server.
    const { x, y } = await freshPixel(11);
    const placed = await placeHttp(await newSession(), x, y, 11);
    for (const [, p] of pages) {
      await p.waitForFunction(([x, y, v]) => window.placecast.pixel(x, y) === 11 && window.placecast.version >= v,
        [x, y, placed.version], { timeout: 5000, polling: 20 });
    }
    for (const [n, p] of pages) await assertPageMatchesServer(p, n);
    for (const [n, p] of pages) assert.equal(await p.locator('#status-text').textContent(), 'Live', n);
  } finally {
    for (const off of listeners) off();
  }
});

test('a paused canvas, a protected area and the end of the event refuse a placement in plain words', async () => {
  await setCooldown(0);
  // The page forgets its own countdown from earlier placements on a reload.
  await pageA.reload({ timeout: 15000 });
  await waitLive(pageA);
  const msg = pageA.locator('#message');
  const refusedWith = async (re, what) => {
    const { x, y } = await freshPixel(3);
    await pageA.locator('#palette .swatch[data-index="3"]').click();
    await clickPixel(pageA, x, y);
    await pageA.waitForFunction((src) => {
      const m = document.getElementById('message');
      return !m.hidden && new RegExp(src, 'i').test(m.textContent);
    }, re.source, { timeout: 5000, polling: 50 }).catch(async (e) => {
      const shown = await pageA.evaluate(() => [document.getElementById('message').hidden, document.getElementById('message').textContent, document.getElementById('cooldown').textContent]);
      throw new Error(what + ': the message never matched ' + re + '; the page shows ' + JSON.stringify(shown) + ' (' + e.message + ')');
    });
    assert.notEqual(await pageA.evaluate(([x, y]) => window.placecast.pixel(x, y), [x, y]), 3, what + ': nothing placed');
    return { x, y };
  };
  assert.equal((await admin(base, 'POST', '/api/v1/admin/pause')).status, 200);
  await refusedWith(/paused by the moderators/, 'paused');
  assert.equal((await admin(base, 'POST', '/api/v1/admin/resume')).status, 200);
  // Protect the whole canvas, so the next fresh pixel is inside it.
  const info = await (await fetchTimeout(base + '/api/v1/canvas/info')).json();
  const all = { x: 0, y: 0, w: info.width, h: info.height };
  assert.equal((await admin(base, 'POST', '/api/v1/admin/protect', all)).status, 200);
  await refusedWith(/protected by the moderators/, 'protected');
  assert.equal((await admin(base, 'POST', '/api/v1/admin/unprotect', all)).status, 200);
  assert.equal((await admin(base, 'POST', '/api/v1/admin/end', { at_ms: Date.now() })).status, 200);
  await refusedWith(/event has ended/, 'ended');
  assert.equal((await admin(base, 'POST', '/api/v1/admin/end', { at_ms: Date.now() + 3600e3 })).status, 200);
  await msg.waitFor({ state: 'visible', timeout: 1000 });
});

test('no uncaught errors in the pages', () => {
  assert.deepEqual(pageErrors, []);
});
