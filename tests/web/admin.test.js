// Browser tests of the moderators' page (web/admin.html, web/admin.js, served at /admin) in a
// real headless Chromium against the real server, started with --admin-token and a --roles
// file of one moderator and one operator (tokens from `placecast role-token`).
//
//   cd tests/web && npm ci && node --test admin.test.js
//
// Env as e2e.test.js: PLACECAST_BIN, CHROMIUM, PLACECAST_WEB_FROM_DISK=1 (the page gets
// web/admin.html and web/admin.js from this checkout instead of the binary's copies).
// Screenshots and logs land in tests/web/artifacts/ (admin-*).
'use strict';

const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const { execFileSync, spawnSync } = require('node:child_process');
const crypto = require('node:crypto');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { chromium } = require('playwright-core');

const { BIN, prepare, sleep, freePort, fetchTimeout, until, exited, stop, launchServer, decodeSnapshot, hexToRgba } = require('./harness');
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const ARTIFACTS = path.join(__dirname, 'artifacts');
const ADMIN_TOKEN = 'admin-test-' + crypto.randomBytes(24).toString('hex');
const SECRET = 'admin-secret-' + crypto.randomBytes(24).toString('hex');
const WIDTH = 64;
const HEIGHT = 48;
const WEB_DIR = path.resolve(__dirname, '../../web');
const WEB_FROM_DISK = process.env.PLACECAST_WEB_FROM_DISK === '1';
const WEB_FILES = { '/admin': 'admin.html', '/admin.js': 'admin.js' };
// Every loopback client shares 127.0.0.1: the per-address limits are off; past canvases too
// (each preview is a history build counted per address).
const SERVER_FLAGS = ['--max-conns-per-addr', '0', '--sessions-per-min', '0', '--placements-per-addr-per-min', '0',
  '--catchups-per-addr-per-min', '0', '--drain-grace-ms', '200', '--drain-spread-s', '1'];
const MOD = 'mod-mia';
const OP = 'op-olga';

let server = null; // { proc, log, port, base, dataDir }
let rolesFile = '';
const extraServers = []; // started by single tests, stopped in after() at the latest
let base = '';
let tmpDir = '';
let browser = null;
const contexts = [];
const pageErrors = [];
const tokens = {}; // name -> role token

// ------------------------------------------------------------------ helpers
async function launch(port, dataDir, rolesFile, extra = []) {
  const args = ['serve', '--listen', `127.0.0.1:${port}`, '--shards', '2', '--data-dir', dataDir,
    '--width', String(WIDTH), '--height', String(HEIGHT), '--cooldown', '0',
    '--admin-token', ADMIN_TOKEN, '--secret', SECRET, '--roles', rolesFile, ...SERVER_FLAGS, ...extra];
  return launchServer({ args, port, logName: 'admin-server.log', fields: { dataDir } });
}

// The canvas now, or at version `at`.
async function snapshot(at) {
  const res = await fetchTimeout(base + '/api/v1/canvas' + (at === undefined ? '' : `?at=${at}`), { cache: 'no-store' });
  assert.equal(res.status, 200, `canvas${at === undefined ? '' : ' at ' + at}: ${res.status}`);
  return decodeSnapshot(Buffer.from(await res.arrayBuffer()));
}

function region(snap, r) {
  const out = [];
  for (let y = r.y; y < r.y + r.h; y++) for (let x = r.x; x < r.x + r.w; x++) out.push(snap.px[y * snap.width + x]);
  return out;
}

async function place(token, x, y, color) {
  const res = await fetchTimeout(base + '/api/v1/place', {
    method: 'POST',
    headers: { 'Content-Type': 'application/json', Authorization: 'Bearer ' + token },
    body: JSON.stringify({ x, y, color }),
  });
  return { status: res.status, body: await res.json() };
}

async function placeOk(token, x, y, color) {
  const r = await place(token, x, y, color);
  assert.equal(r.status, 200, JSON.stringify(r.body));
  return r.body;
}

async function getJson(p, token) {
  const res = await fetchTimeout(base + p, { cache: 'no-store', headers: token ? { Authorization: 'Bearer ' + token } : {} });
  const body = await res.json();
  assert.equal(res.status, 200, `${p}: ${JSON.stringify(body)}`);
  return body;
}

// Waits until the history index holds version `v` (a past canvas needs it).
function historyAt(v) {
  return until(`history at version ${v}`, async () => (await getJson('/api/v1/history/info')).version >= v);
}

// A token for user `name`, as an operator's sign-in service would mint it.
function mintToken(name) {
  return execFileSync(BIN, ['mint-token', name, '--secret', SECRET], { encoding: 'utf8' }).trim();
}

// `placecast role-token NAME --role ROLE`: the token on stdout, the roles-file entry on stderr.
function roleToken(name, role) {
  const r = spawnSync(BIN, ['role-token', name, '--role', role], { encoding: 'utf8' });
  assert.equal(r.status, 0, r.stderr);
  const token = r.stdout.trim();
  const at = r.stderr.indexOf('[[holder]]');
  assert.ok(token.length >= 32 && at >= 0, `role-token output: ${r.stdout} / ${r.stderr}`);
  return { token, entry: r.stderr.slice(at).trim() };
}

async function newContext() {
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  contexts.push(context);
  context.setDefaultTimeout(10000);
  if (WEB_FROM_DISK) {
    await context.route((url) => url.hostname === '127.0.0.1' && Object.hasOwn(WEB_FILES, url.pathname), (route) => {
      const file = WEB_FILES[new URL(route.request().url()).pathname];
      const type = file.endsWith('.js') ? 'text/javascript' : 'text/html';
      return route.fulfill({ status: 200, contentType: type + '; charset=utf-8', body: fs.readFileSync(path.join(WEB_DIR, file)) });
    });
  }
  return context;
}

function watchPage(page, name) {
  const consoleLog = fs.createWriteStream(path.join(ARTIFACTS, `console-admin-${name}.log`));
  page.on('console', (m) => consoleLog.write(`[${m.type()}] ${m.text()}\n`));
  page.on('pageerror', (err) => { pageErrors.push(`${name}: ${err.stack || err}`); consoleLog.write(`[pageerror] ${err.stack || err}\n`); });
  page.on('close', () => consoleLog.end());
}

async function openAdmin(name) {
  const context = await newContext();
  const page = await context.newPage();
  watchPage(page, name);
  await page.goto(base + '/admin', { timeout: 15000 });
  await page.waitForFunction(() => window.placecastAdmin !== undefined, null, { timeout: 10000, polling: 50 });
  return page;
}

// Types the token and signs in (Enter in the field), waiting until the page shows who.
async function signIn(page, token, who) {
  await page.locator('#token-input').fill(token);
  await page.locator('#token-input').press('Enter');
  await page.waitForFunction((w) => document.getElementById('who').textContent === w, who, { timeout: 10000, polling: 20 });
  await idle(page);
}

// No admin request running and every panel loaded at least once.
function idle(page) {
  return page.waitForFunction(() => {
    const a = window.placecastAdmin;
    const l = a.loads;
    return a.signedIn && a.busy === 0 && !a.refreshing && l.canvas > 0 && l.audit > 0 && l.info > 0 && l.hist > 0;
  }, null, { timeout: 10000, polling: 20 });
}

// Waits until a result line is `state` and matches `re`; the line's text.
async function result(page, id, state, re, timeout = 10000) {
  try {
    await page.waitForFunction(([id, state, src]) => {
      const e = document.getElementById(id);
      return e.dataset.state === state && new RegExp(src).test(e.textContent);
    }, [id, state, re.source], { timeout, polling: 20 });
  } catch (err) {
    const got = await page.evaluate((id) => [document.getElementById(id).dataset.state, document.getElementById(id).textContent], id);
    throw new Error(`#${id}: wanted ${state} ${re}, the page shows ${JSON.stringify(got)} (${err.message})`);
  }
  return page.locator('#' + id).textContent();
}

// The canvas reloaded after `version` (the page's view shows it).
// (The snapshot follows the log a batch behind: Reload canvas until it does.)
async function pageAt(page, version) {
  await until(`the page's canvas at version ${version}`, async () => {
    await page.locator('#reload-canvas').click();
    await page.waitForFunction(() => window.placecastAdmin.busy === 0, null, { timeout: 10000, polling: 20 });
    return page.evaluate((v) => window.placecastAdmin.version >= v, version);
  });
}

// Drags on the page's canvas from the middle of pixel a to the middle of pixel b.
async function drag(page, a, b) {
  const p = await page.evaluate(([x, y]) => window.placecastAdmin.screenPoint(x, y), [a.x, a.y]);
  const q = await page.evaluate(([x, y]) => window.placecastAdmin.screenPoint(x, y), [b.x, b.y]);
  await page.mouse.move(p.x, p.y);
  await page.mouse.down();
  await page.mouse.move((p.x + q.x) / 2, (p.y + q.y) / 2, { steps: 4 });
  await page.mouse.move(q.x, q.y, { steps: 4 });
  await page.mouse.up();
}

async function clickPixel(page, x, y) {
  const p = await page.evaluate(([x, y]) => window.placecastAdmin.screenPoint(x, y), [x, y]);
  await page.mouse.click(p.x, p.y);
}

// The RGBA pixels of a canvas element of the page, row-major.
function canvasPixels(page, id) {
  return page.evaluate((id) => {
    const c = document.getElementById(id);
    return { w: c.width, h: c.height, data: Array.from(c.getContext('2d').getImageData(0, 0, c.width, c.height).data) };
  }, id);
}

async function shot(page, name) {
  await page.screenshot({ path: path.join(ARTIFACTS, 'admin-' + name + '.png'), timeout: 10000, fullPage: true });
}

// ------------------------------------------------------------------ set-up and clean-up

before(async () => {
  prepare(CHROMIUM, () => [server, ...extraServers]);
  fs.mkdirSync(ARTIFACTS, { recursive: true });
  fs.rmSync(path.join(ARTIFACTS, 'admin-server.log'), { force: true });
  tmpDir = fs.mkdtempSync(path.join(os.tmpdir(), 'placecast-web-admin-'));
  const entries = [];
  for (const [name, role] of [[MOD, 'moderator'], [OP, 'operator']]) {
    const { token, entry } = roleToken(name, role);
    tokens[name] = token;
    entries.push(entry);
  }
  rolesFile = path.join(tmpDir, 'roles.toml');
  fs.writeFileSync(rolesFile, entries.join('\n\n') + '\n');
  const dataDir = path.join(tmpDir, 'data');
  fs.mkdirSync(dataDir);
  server = await launch(await freePort(), dataDir, rolesFile);
  base = server.base;
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    timeout: 30000,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
});

after(async () => {
  for (const c of contexts) await c.close().catch(() => {});
  if (browser) await browser.close().catch(() => {});
  if (server) await stop(server);
  for (const srv of extraServers) await stop(srv);
  if (tmpDir) fs.rmSync(tmpDir, { recursive: true, force: true });
});

// ------------------------------------------------------------------ scenarios
let modPage = null;
const alice = () => mintToken('alice');
const troll = () => mintToken('troll');

test('the server serves the admin page and its script with the right content types', async (t) => {
  for (const [p, type] of [['/admin', 'text/html'], ['/admin.js', 'javascript']]) {
    const res = await fetchTimeout(base + p);
    assert.equal(res.status, 200, p);
    assert.match(res.headers.get('content-type') || '', new RegExp(type), `${p} content type`);
    const served = Buffer.from(await res.arrayBuffer());
    const disk = fs.readFileSync(path.join(WEB_DIR, WEB_FILES[p]));
    if (WEB_FROM_DISK) {
      if (!served.equals(disk)) t.diagnostic(`${p}: the binary's embedded copy differs from web/; the page gets web/`);
    } else {
      assert.ok(served.equals(disk), `${p}: the binary serves this checkout's web/${WEB_FILES[p]} (embedded: rebuild the server)`);
    }
  }
});

test('signing in: a wrong token is refused, a moderator is named, the token stays in sessionStorage, sign out', async () => {
  const page = await openAdmin('moderator');
  assert.equal(await page.locator('#main').isVisible(), false, 'nothing but the sign-in before signing in');
  assert.equal(await page.evaluate(() => document.activeElement.id), 'token-input', 'the token field has the focus');

  await page.locator('#token-input').fill('not-a-token-' + crypto.randomBytes(16).toString('hex'));
  await page.locator('#signin').click();
  const refused = await result(page, 'signin-result', 'error', /^Unknown token: .*\(401 bad_token\)$/);
  assert.match(refused, /the admin API needs Authorization: Bearer/);
  assert.equal(await page.locator('#main').isVisible(), false);
  assert.equal(await page.evaluate(() => sessionStorage.length), 0, 'a refused token is not kept');
  assert.equal(await page.locator('#who').textContent(), 'Not signed in');

  await signIn(page, tokens[MOD], `Signed in as ${MOD} (moderator)`);
  assert.equal(await page.locator('#main').isVisible(), true);
  assert.equal(await page.evaluate(() => window.placecastAdmin.role), 'moderator');
  const stored = await page.evaluate(() => ({ s: Object.values(sessionStorage), l: localStorage.length, url: location.href }));
  assert.deepEqual(stored.s, [tokens[MOD]], 'the token is in sessionStorage');
  assert.equal(stored.l, 0, 'nothing in localStorage');
  assert.equal(stored.url, base + '/admin', 'the token is not in the address');
  assert.equal(await page.locator('#token-input').inputValue(), '', 'the field is emptied');
  await shot(page, 'signed-in');

  // A reload stays signed in (this tab's sessionStorage).
  await page.reload();
  await page.waitForFunction((w) => document.getElementById('who').textContent === w, `Signed in as ${MOD} (moderator)`,
    { timeout: 10000, polling: 20 });
  await idle(page);

  await page.locator('#signout').click();
  assert.equal(await page.locator('#who').textContent(), 'Not signed in');
  assert.equal(await page.evaluate(() => sessionStorage.length), 0, 'signing out forgets the token');
  assert.equal(await page.locator('#main').isVisible(), false);
  assert.equal(await page.locator('#signin-form').isVisible(), true);

  await signIn(page, tokens[MOD], `Signed in as ${MOD} (moderator)`);
  assert.equal(page.url(), base + '/admin');
  modPage = page;
});

test("a moderator's pause is refused with the server's forbidden_role message; an operator's works", async () => {
  await modPage.locator('#pause').click();
  const msg = await result(modPage, 'sw-result', 'error', /forbidden_role/);
  assert.equal(msg, `this needs the operator role; ${MOD} is a moderator (403 forbidden_role)`);
  assert.equal((await getJson('/api/v1/canvas/info')).paused, false, 'nothing paused');
  assert.equal(await modPage.locator('#pause').isDisabled(), false, 'the buttons are back');

  // An operator's name shows once their first entry is in the audit (no call names an operator).
  const op = await openAdmin('operator');
  await signIn(op, tokens[OP], 'Signed in as an operator (operator)');
  assert.equal(await op.locator('#sw-paused').textContent(), 'open');
  await op.locator('#pause').click();
  assert.match(await result(op, 'sw-result', 'ok', /^Paused \(version \d+\)\.$/), /Paused/);
  await op.waitForFunction(() => document.getElementById('sw-paused').textContent === 'paused', null, { timeout: 5000, polling: 20 });
  await op.waitForFunction((w) => document.getElementById('who').textContent === w, `Signed in as ${OP} (operator)`,
    { timeout: 5000, polling: 20 });
  assert.equal((await getJson('/api/v1/canvas/info')).paused, true);
  const refused = await place(alice(), 0, 0, 1);
  assert.equal(refused.status, 423, JSON.stringify(refused.body));
  assert.equal(refused.body.error.code, 'paused');
  await op.locator('#resume').click();
  await result(op, 'sw-result', 'ok', /^Resumed \(version \d+\)\.$/);
  await op.waitForFunction(() => document.getElementById('sw-paused').textContent === 'open', null, { timeout: 5000, polling: 20 });

  // The cooldown and the end, typed in.
  await op.locator('#cooldown-s').fill('7');
  await op.locator('#set-cooldown').click();
  await result(op, 'sw-result', 'ok', /^Cooldown set to 7 s/);
  await op.waitForFunction(() => document.getElementById('sw-cooldown').textContent === '7 s', null, { timeout: 5000, polling: 20 });
  assert.equal((await getJson('/api/v1/canvas/info')).cooldown_ms, 7000);
  await op.locator('#cooldown-s').fill('0');
  await op.locator('#cooldown-s').press('Tab');
  await op.locator('#set-cooldown').press('Enter'); // keyboard: the focused button
  await op.waitForFunction(() => document.getElementById('sw-cooldown').textContent === '0 s', null, { timeout: 5000, polling: 20 });
  const end = new Date(Date.now() + 2 * 3600e3);
  end.setMilliseconds(0);
  const p2 = (n) => String(n).padStart(2, '0');
  await op.locator('#end-at').fill(`${end.getFullYear()}-${p2(end.getMonth() + 1)}-${p2(end.getDate())}T${p2(end.getHours())}:${p2(end.getMinutes())}:${p2(end.getSeconds())}`);
  await op.locator('#set-end').click();
  await result(op, 'sw-result', 'ok', /^The event ends at /);
  assert.equal((await getJson('/api/v1/canvas/info')).end_at_ms, end.getTime());
  await op.waitForFunction((s) => document.getElementById('sw-end').textContent === s,
    await op.evaluate((ms) => new Date(ms).toLocaleString(), end.getTime()), { timeout: 5000, polling: 20 });
  await shot(op, 'operator');

  // The --admin-token operator too: named "operator".
  const admin = await openAdmin('admin-token');
  await signIn(admin, ADMIN_TOKEN, 'Signed in as an operator (operator)');
  await admin.locator('#resume').click();
  await result(admin, 'sw-result', 'ok', /^Resumed/);
  await admin.waitForFunction(() => document.getElementById('who').textContent === 'Signed in as operator (operator)', null,
    { timeout: 5000, polling: 20 });
  await op.context().close();
  await admin.context().close();
});

test('select a rectangle by dragging, preview it at an earlier version, restore it', async (t) => {
  const a = alice();
  const tr = troll();
  const art = { x: 10, y: 10, w: 6, h: 4 };
  let v0 = 0;
  for (let y = art.y; y < art.y + art.h; y++) {
    for (let x = art.x; x < art.x + art.w; x++) v0 = (await placeOk(a, x, y, 2 + ((x + y) % 5))).version;
  }
  // The troll paints over part of it, and a pixel outside the rectangle restored.
  for (const [x, y] of [[11, 11], [12, 11], [13, 12], [14, 12], [9, 9]]) await placeOk(tr, x, y, 13);
  const outside = await placeOk(tr, 20, 20, 13);
  await historyAt(outside.version);
  const sel = { x: 9, y: 9, w: 8, h: 6 };

  const page = modPage;
  await pageAt(page, outside.version);
  await page.locator('#zoom').selectOption('8');
  await page.waitForFunction(() => window.placecastAdmin.scale === 8, null, { timeout: 5000, polling: 20 });
  await drag(page, { x: 16, y: 14 }, { x: 9, y: 9 }); // from the far corner: any direction
  assert.deepEqual(await page.evaluate(() => window.placecastAdmin.selection), sel);
  const inputs = await Promise.all(['#sel-x', '#sel-y', '#sel-w', '#sel-h'].map((s) => page.locator(s).inputValue()));
  assert.deepEqual(inputs, ['9', '9', '8', '6'], 'the number inputs follow the drag');
  assert.equal(await page.locator('#sel-text').textContent(), '8×6 at (9, 9): 48 pixels');
  const box = await page.locator('#sel').boundingBox();
  const corner = await page.evaluate(() => window.placecastAdmin.screenPoint(9, 9));
  assert.ok(Math.abs(box.x - (corner.x - 4)) <= 1.5 && Math.abs(box.width - 64) <= 1.5, `selection outline ${JSON.stringify(box)}`);

  // The slider (keyboard): its start is the first version, its end the current one; then the
  // version typed in.
  const shown = (v) => page.waitForFunction((v) => {
    const p = window.placecastAdmin.preview;
    return p && p.version === v && !window.placecastAdmin.previewLoading;
  }, v, { timeout: 10000, polling: 20 });
  assert.equal(await page.locator('#hist-range').inputValue(), String(outside.version), 'the slider starts at the current version');
  await page.locator('#hist-range').focus();
  await page.keyboard.press('Home');
  await shown(0);
  assert.match(await page.locator('#preview-label').textContent(), /^Showing version 0 \(the empty canvas\)$/);
  await page.keyboard.press('End');
  await shown(outside.version);
  await page.locator('#hist-version').fill(String(v0));
  await page.locator('#hist-version').press('Enter');
  await shown(v0);
  assert.equal(await page.locator('#hist-range').inputValue(), String(v0), 'the slider follows');
  assert.match(await page.locator('#preview-label').textContent(), new RegExp(`^Showing version ${v0} \\(`));
  assert.equal(await page.locator('#restore').textContent(), `Restore the selection to version ${v0}`);

  // The preview shows the selection as it was at v0; "now" as it is.
  const palette = await page.evaluate(() => window.placecastAdmin.palette);
  const then = region(await snapshot(v0), sel);
  const now = region(await snapshot(), sel);
  assert.notDeepEqual(then, now, 'the troll changed the rectangle');
  for (const [id, want] of [['prev-then', then], ['prev-now', now]]) {
    const got = await canvasPixels(page, id);
    assert.equal(got.w, sel.w);
    assert.equal(got.h, sel.h);
    const rgba = want.flatMap((c) => hexToRgba(palette[c]));
    assert.deepEqual(got.data, rgba, `#${id} shows the selection's pixels`);
  }
  await page.locator('#overlay-past').check();
  assert.equal(await page.locator('#sel-past').isVisible(), true, 'the earlier version over the selection');
  await shot(page, 'preview');
  await page.locator('#overlay-past').uncheck();

  // Restore: the buttons are disabled while the request runs (held by the test until seen).
  let release;
  const held = new Promise((r) => { release = r; });
  let seen = false;
  await page.route('**/api/v1/admin/restore', async (route) => { seen = true; await held; await route.continue(); });
  await page.locator('#restore').click();
  await until('the restore request', () => seen);
  assert.equal(await page.locator('#restore').isDisabled(), true, 'restore disabled while it runs');
  assert.equal(await page.locator('#preview').isDisabled(), true, "its panel's buttons too");
  assert.equal(await page.locator('#hist-result').getAttribute('data-state'), 'busy');
  release();
  const text = await result(page, 'hist-result', 'ok', /^Restored 8×6 at \(9, 9\) to version \d+: \d+ pixels? changed/);
  await page.unroute('**/api/v1/admin/restore');
  t.diagnostic(text);
  assert.equal(await page.locator('#restore').isDisabled(), false);
  const m = /: (\d+) pixels? changed, logged up to version (\d+)\.$/.exec(text);
  assert.ok(m, text);
  assert.equal(Number(m[1]), then.filter((c, i) => c !== now[i]).length, 'one edit per pixel that changes');

  // Through the API: the rectangle equals the canvas at v0, the rest is untouched.
  const after = await until('the restored canvas', async () => {
    const s = await snapshot();
    return s.version >= Number(m[2]) ? s : null;
  });
  assert.deepEqual(region(after, sel), region(await snapshot(v0), sel), 'the rectangle is the canvas at v0');
  assert.equal(after.px[20 * WIDTH + 20], 13, 'outside the rectangle nothing changed');
  const px = await getJson('/api/v1/pixel?x=11&y=11');
  assert.equal(px.last.user, MOD, 'the restored pixel is attributed to the moderator');
  assert.equal(px.last.version <= Number(m[2]), true);
  // The page reloads the canvas after the action: "now" equals "then".
  await page.waitForFunction((v) => window.placecastAdmin.version >= v, Number(m[2]), { timeout: 10000, polling: 20 });
  const nowShown = await canvasPixels(page, 'prev-now');
  assert.deepEqual(nowShown.data, then.flatMap((c) => hexToRgba(palette[c])));
  await shot(page, 'restored');
});

test("a pixel's info names who placed it; Ban this user (with a revert) bans them; unban by name", async () => {
  const a = alice();
  const tr = troll();
  await placeOk(a, 30, 20, 3);
  await placeOk(a, 31, 20, 4);
  await placeOk(tr, 31, 20, 13);
  const last = await placeOk(tr, 30, 20, 5);
  await historyAt(last.version);
  const page = modPage;
  await pageAt(page, last.version);

  await clickPixel(page, 30, 20);
  await page.waitForFunction(() => { const p = window.placecastAdmin.pixel; return p && p.x === 30 && p.y === 20 && p.loaded; },
    null, { timeout: 10000, polling: 20 });
  assert.equal(await page.evaluate(() => window.placecastAdmin.selection && window.placecastAdmin.selection.w), 8,
    'a click is not a drag: the selection stays');
  const api = await getJson('/api/v1/pixel?x=30&y=20&history=10');
  assert.equal(await page.locator('#pixel-user').textContent(), 'troll');
  assert.equal(await page.locator('#pixel-version').textContent(), String(api.last.version));
  assert.match(await page.locator('#pixel-body').textContent(), new RegExp(`^Pixel \\(30, 20\\): color 5, placed by troll at .+, version ${last.version}\\.$`));
  assert.equal(await page.locator('#pixel-history li').count(), api.history.length);
  assert.match(await page.locator('#pixel-history li').nth(1).textContent(), /color 3 by alice/);
  assert.equal(await page.locator('#ban-pixel-user').textContent(), 'Ban troll');
  assert.equal(await page.locator('#ban-pixel-user').isEnabled(), true);
  await shot(page, 'pixel-info');

  await page.locator('#ban-revert').check();
  await page.locator('#ban-minutes').fill('10');
  await page.locator('#ban-pixel-user').click();
  await result(page, 'pixel-result', 'ok', /^Banned troll \(version \d+\); \d+ pixels? of theirs reverted\.$/);
  const refused = await place(tr, 40, 40, 1);
  assert.equal(refused.status, 403, JSON.stringify(refused.body));
  assert.equal(refused.body.error.code, 'banned');
  const s = await snapshot();
  assert.equal(s.px[20 * WIDTH + 30], 3, "the troll's pixel is back to alice's color");
  assert.equal(s.px[20 * WIDTH + 31], 4, 'and the other one');
  // The panel looks the pixel up again: now the moderator's revert.
  await page.waitForFunction((m) => { const e = document.getElementById('pixel-user'); return e && e.textContent === m; }, MOD,
    { timeout: 10000, polling: 20 });
  await page.waitForFunction(() => document.getElementById('sw-banned').textContent === '1', null, { timeout: 5000, polling: 20 });

  // Unknown users get the server's word; unban by name.
  await page.locator('#user-name').fill('nobody-here');
  await page.locator('#user-ban').click();
  await result(page, 'user-result', 'error', /\(404 unknown_user\)$/);
  await page.locator('#user-name').fill('troll');
  await page.locator('#user-unban').click();
  await result(page, 'user-result', 'ok', /^Unbanned troll \(version \d+\)\.$/);
  await placeOk(tr, 40, 40, 1);
  await page.waitForFunction(() => document.getElementById('sw-banned').textContent === '0', null, { timeout: 5000, polling: 20 });
});

test('fill and protect the selection typed into the inputs; the protected outlines', async () => {
  const page = modPage;
  const r = { x: 40, y: 30, w: 5, h: 3 };
  for (const [id, v] of [['#sel-x', r.x], ['#sel-y', r.y], ['#sel-w', r.w], ['#sel-h', r.h]]) {
    await page.locator(id).fill(String(v));
    await page.locator(id).press('Tab');
  }
  assert.deepEqual(await page.evaluate(() => window.placecastAdmin.selection), r);
  await page.locator('#fill-swatches input[data-index="6"]').check();
  await page.locator('#fill').click();
  await result(page, 'fill-result', 'ok', /^Filled 5×3 at \(40, 30\) with color 6 \(#[0-9a-f]{6}\): 15 pixels changed/);
  const filled = await snapshot();
  assert.ok(region(filled, r).every((c) => c === 6), 'the rectangle is color 6');
  assert.equal(filled.px[29 * WIDTH + 40], 0, 'the row above is untouched');

  // Too big for the canvas: the server's message.
  await page.locator('#sel-w').fill('500');
  await page.locator('#sel-w').press('Tab');
  assert.equal(await page.locator('#sel-w').inputValue(), String(WIDTH - r.x), 'the selection is clamped to the canvas');
  await page.locator('#sel-w').fill(String(r.w));
  await page.locator('#sel-w').press('Tab');

  await page.locator('#protect').click();
  await result(page, 'fill-result', 'ok', /^Protected 5×3 at \(40, 30\) \(version \d+\)\.$/);
  await page.waitForFunction(() => document.querySelectorAll('#overlay .prot').length === 1, null, { timeout: 5000, polling: 20 });
  assert.deepEqual((await getJson('/api/v1/canvas/info')).protected, [r]);
  const outline = await page.locator('#overlay .prot').boundingBox();
  const corner = await page.evaluate(() => window.placecastAdmin.screenPoint(40, 30));
  const scale = await page.evaluate(() => window.placecastAdmin.scale);
  assert.ok(Math.abs(outline.x - (corner.x - scale / 2)) <= 1.5 && Math.abs(outline.width - 5 * scale) <= 1.5,
    `the outline sits on the rectangle: ${JSON.stringify(outline)}`);
  assert.equal(await page.locator('#sw-protected').textContent(), '1 rectangle');
  assert.match(await page.locator('#protected-list').textContent(), /5×3 at \(40, 30\)/);
  const refused = await place(alice(), 41, 31, 1);
  assert.equal(refused.status, 403);
  assert.equal(refused.body.error.code, 'protected');
  await shot(page, 'protected');

  await page.locator('#unprotect').click();
  await result(page, 'fill-result', 'ok', /^Unprotected inside 5×3 at \(40, 30\)/);
  await page.waitForFunction(() => document.querySelectorAll('#overlay .prot').length === 0, null, { timeout: 5000, polling: 20 });
  await placeOk(alice(), 41, 31, 1);

  // No selection of the right size for the server: its own refusal shows.
  await page.locator('#hist-version').fill('999999');
  await page.locator('#restore').click();
  await result(page, 'hist-result', 'error', /^version 999999 is in the future: the canvas is at \d+ \(404 version_not_yet\)$/);
});

test("the audit list shows every action, newest first, with the moderator's name", async () => {
  const page = modPage;
  await page.locator('#audit-refresh').click();
  await page.waitForFunction(() => window.placecastAdmin.busy === 0, null, { timeout: 5000, polling: 20 });
  const api = await getJson('/api/v1/admin/audit?limit=100', tokens[MOD]);
  const rows = await page.locator('#audit-body tr').evaluateAll((trs) => trs.map((tr) =>
    ({ version: Number(tr.dataset.version), cells: Array.from(tr.cells).map((c) => c.textContent) })));
  assert.deepEqual(rows.map((r) => r.version), api.entries.map((e) => e.version), 'the same entries as the API, in its order');
  for (let i = 1; i < rows.length; i++) assert.ok(rows[i - 1].version > rows[i].version, 'newest first');
  const mine = rows.filter((r) => r.cells[1] === MOD).map((r) => r.cells[2]);
  assert.deepEqual(mine, ['unprotect', 'protect', 'fill', 'unban', 'ban', 'restore'], `the moderator's actions: ${JSON.stringify(rows)}`);
  const ops = rows.filter((r) => r.cells[1] === OP).map((r) => r.cells[2]);
  assert.deepEqual(ops, ['end', 'cooldown', 'cooldown', 'resume', 'pause']);
  assert.ok(rows.some((r) => r.cells[1] === 'operator' && r.cells[2] === 'resume'), 'the --admin-token operator');
  const ban = rows.find((r) => r.cells[2] === 'ban');
  assert.match(ban.cells[3], /^troll · key [0-9a-f]{16} · revert since /);
  const restore = rows.find((r) => r.cells[2] === 'restore');
  assert.match(restore.cells[3], /^8×6 at \(9, 9\) · to version \d+$/);
  assert.match(rows.find((r) => r.cells[2] === 'fill').cells[3], /^5×3 at \(40, 30\) · color 6 #[0-9a-f]{6}$/);
  assert.equal(rows[0].cells[0], await page.evaluate((ms) => new Date(ms).toLocaleString(), api.entries[0].ts_ms));
  await shot(page, 'audit');
});

test('with --pixel-lookup hashed the pixel panel says who placed it cannot be banned from there', async () => {
  const dir = path.join(tmpDir, 'data-hashed');
  fs.mkdirSync(dir);
  const srv = await launch(await freePort(), dir, rolesFile, ['--pixel-lookup', 'hashed']);
  extraServers.push(srv);
  try {
    const res = await fetchTimeout(srv.base + '/api/v1/place', {
      method: 'POST',
      headers: { 'Content-Type': 'application/json', Authorization: 'Bearer ' + troll() },
      body: JSON.stringify({ x: 5, y: 5, color: 5 }),
    });
    assert.equal(res.status, 200);
    const context = await newContext();
    const page = await context.newPage();
    watchPage(page, 'hashed');
    await page.goto(srv.base + '/admin', { timeout: 15000 });
    await signIn(page, tokens[MOD], `Signed in as ${MOD} (moderator)`);
    await page.locator('#pixel-x').fill('5');
    await page.locator('#pixel-y').fill('5');
    await page.locator('#pixel-lookup').click();
    await page.waitForFunction(() => { const p = window.placecastAdmin.pixel; return p && p.loaded; }, null, { timeout: 10000, polling: 20 });
    assert.match(await page.locator('#pixel-user').textContent(), /^[0-9a-f]{12}$/, 'a hashed name');
    assert.match(await page.locator('#pixel-ban-note').textContent(), /hashed names .* cannot be banned from here/);
    assert.equal(await page.locator('#ban-pixel-user').isDisabled(), true);
    await context.close();
  } finally {
    await stop(srv);
  }
});

test('no uncaught errors in the admin pages', () => {
  assert.deepEqual(pageErrors, []);
});
