'use strict';
// What every browser test file shares: the server binary under test, free loopback ports,
// bounded fetches, waiting for conditions, starting a server and stopping it by its own PID, and decoding the
// binary snapshot (PROTOCOL.md). Each test file keeps its own servers and pages.
const assert = require('node:assert/strict');
const fs = require('node:fs');
const net = require('node:net');
const path = require('node:path');

const ROOT = path.resolve(__dirname, '../..');

// PLACECAST_BIN, or this build's debug binary. A relative path is taken from the repository
// root when it is not found from here (run.sh runs the tests from tests/web).
const BIN = (() => {
  const b = process.env.PLACECAST_BIN;
  if (!b) return path.join(ROOT, 'target/debug/placecast');
  return path.isAbsolute(b) || fs.existsSync(b) ? path.resolve(b) : path.resolve(ROOT, b);
})();

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

// Polls `fn` every `every` ms until it returns something truthy; fails after `timeout` ms.
async function until(what, fn, timeout = 10000, every = 50) {
  const deadline = Date.now() + timeout;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeout} ms waiting for ${what}`);
    await sleep(every);
  }
}

function exited(proc) {
  if (proc.exitCode !== null || proc.signalCode !== null) return Promise.resolve();
  return new Promise((r) => proc.once('exit', () => r()));
}

// SIGTERM (a drain), then SIGKILL if it has not exited within 15 s; only our own child.
async function stop(srv) {
  const { proc } = srv;
  if (proc.exitCode !== null || proc.signalCode !== null) return;
  const gone = exited(proc);
  proc.kill('SIGTERM');
  const done = await Promise.race([gone.then(() => true), sleep(15000).then(() => false)]);
  if (!done) {
    proc.kill('SIGKILL');
    await Promise.race([gone, sleep(5000)]);
  }
}

// Spawns the server binary with `args` (`--listen 127.0.0.1:PORT` among them) and waits until
// it answers /healthz (30 s; stopped and an error with its log otherwise). Its output is kept
// (the last 200 chunks, in `srv.log`) and appended to artifacts/<logName>, secrets redacted.
async function launchServer({ args, port, name = '', logName, fields = {} }) {
  const { spawn } = require('node:child_process');
  const proc = spawn(BIN, args, { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, RUST_LOG: process.env.RUST_LOG || 'info' } });
  const log = [];
  const logFile = fs.createWriteStream(path.join(__dirname, 'artifacts', logName), { flags: 'a' });
  const shown = args.map((a, i) => (args[i - 1] === '--admin-token' || args[i - 1] === '--secret' ? '<redacted>' : a));
  const label = name ? `[${name}] ` : '';
  logFile.write(`--- ${new Date().toISOString()} ${label}${BIN} ${shown.join(' ')}\n`);
  for (const stream of [proc.stdout, proc.stderr]) {
    stream.on('data', (d) => { log.push(String(d)); if (log.length > 200) log.shift(); logFile.write(d); });
  }
  proc.on('exit', (code, sig) => logFile.end(`--- ${label}exited: ${code === null ? sig : code}\n`));
  const srv = { proc, log, name, port, base: `http://127.0.0.1:${port}`, ...fields };
  const deadline = Date.now() + 30000;
  let last = '';
  for (;;) {
    if (proc.exitCode !== null) {
      await stop(srv);
      throw new Error(`server ${name} exited with ${proc.exitCode} before it was healthy:\n${log.join('')}`);
    }
    try {
      const res = await fetchTimeout(srv.base + '/healthz', {}, 1000);
      if (res.ok) return srv;
      last = 'HTTP ' + res.status;
    } catch (err) {
      last = String((err.cause && err.cause.code) || err.message);
    }
    if (Date.now() > deadline) {
      await stop(srv);
      throw new Error(`server ${name} not healthy after 30 s (${last}):\n${log.join('')}`);
    }
    await sleep(100);
  }
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

// The page's live model equals the server's snapshot `snap` (decodeSnapshot's): size, version
// and every pixel, once the page has reached the snapshot's version (within `timeout` ms).
async function assertPageMatches(page, snap, name, timeout = 15000) {
  await page.waitForFunction((v) => window.placecast.version >= v, snap.version, { timeout, polling: 20 });
  const st = await page.evaluate(() => ({ w: window.placecast.width, h: window.placecast.height, v: window.placecast.version }));
  assert.equal(st.w, snap.width, `${name}: width`);
  assert.equal(st.h, snap.height, `${name}: height`);
  assert.equal(st.v, snap.version, `${name}: version equals the server snapshot's (nothing placed meanwhile)`);
  const px = await pageIndices(page);
  assert.equal(px.length, snap.px.length, `${name}: pixel count`);
  let diff = 0;
  for (let i = 0; i < snap.px.length; i++) if (px[i] !== snap.px[i]) diff++;
  assert.equal(diff, 0, `${name}: pixels differing from the server snapshot`);
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

function hexToRgba(hex) {
  const n = parseInt(hex.slice(1, 7), 16);
  return [n >> 16 & 255, n >> 8 & 255, n & 255, 255];
}

// Before a test file's first test: the binary and the browser exist, and every server it starts
// (`servers()` lists them) is killed, by its own PID, if node exits or is interrupted first.
function prepare(chromium, servers) {
  assert.ok(fs.existsSync(BIN), `server binary not found at ${BIN} (build it with cargo build, or set PLACECAST_BIN)`);
  assert.ok(fs.existsSync(chromium), `chromium not found at ${chromium} (apt-get install -y chromium)`);
  const kill = () => {
    for (const srv of servers()) {
      if (srv && srv.proc.exitCode === null && srv.proc.signalCode === null) {
        try { srv.proc.kill('SIGKILL'); } catch (_) { /* gone */ }
      }
    }
  };
  process.on('exit', kill);
  for (const sig of ['SIGINT', 'SIGTERM']) process.once(sig, () => { kill(); process.exit(130); });
}

module.exports = { ROOT, BIN, prepare, sleep, freePort, fetchTimeout, until, exited, stop, launchServer, pageIndices, assertPageMatches, decodeSnapshot, hexToRgba };
