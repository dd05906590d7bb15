// Unit tests of the web client's proof-of-work kernel (SHA-256 and the nonce search), run in node
// against node's own SHA-256. The kernel is taken from web/app.js between its BEGIN/END markers,
// the same source text the page runs in its Web Workers. No server or browser needed.
'use strict';

const { test } = require('node:test');
const assert = require('node:assert/strict');
const crypto = require('node:crypto');
const fs = require('node:fs');
const path = require('node:path');

const APP_JS = fs.readFileSync(path.resolve(__dirname, '../../web/app.js'), 'utf8');
const m = /\/\/ BEGIN POW KERNEL\n([\s\S]*?)\/\/ END POW KERNEL/.exec(APP_JS);
assert.ok(m, 'web/app.js has the proof-of-work kernel between its markers');
const kernel = new Function(`'use strict';\n${m[1]}\nreturn powKernel();`)();

const hex = (b) => Buffer.from(b).toString('hex');
const sha = (s) => crypto.createHash('sha256').update(s).digest();
function zeroBits(buf) {
  let n = 0;
  for (const b of buf) {
    if (b) return n + Math.clz32(b) - 24;
    n += 8;
  }
  return n;
}
function smallest(challenge, bits, from = 0) {
  for (let n = from; ; n++) if (zeroBits(sha(`${challenge}.${n}`)) >= bits) return n;
}

test('sha256 matches known answers and node across block boundaries', () => {
  assert.equal(hex(kernel.sha256('abc.0')).slice(0, 8), '20b699b1');
  assert.equal(hex(kernel.sha256('abc')), 'ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad');
  for (let len = 0; len <= 200; len++) {
    const s = 'x'.repeat(len);
    assert.equal(hex(kernel.sha256(s)), hex(sha(s)), `length ${len}`);
  }
});

test('the search finds the known smallest nonce', () => {
  assert.equal(kernel.search('placecast-test', 12, 0, 100000), 7100);
  assert.equal(kernel.search('placecast-test', 12, 0, 7100), -1, 'nothing below 7100');
  assert.equal(kernel.search('placecast-test', 12, 7000, 200), 7100, 'from the middle of a range');
});

test('the search agrees with node for every prefix length (1 and 2 block tails)', () => {
  for (let len = 0; len < 140; len++) {
    const ch = 'p'.repeat(len);
    const want = smallest(ch, 9);
    assert.equal(kernel.search(ch, 9, 0, 1 << 20), want, `challenge of ${len} bytes`);
    assert.equal(kernel.search(ch, 9, Math.max(0, want - 3), 100), want, `challenge of ${len} bytes, from ${want - 3}`);
  }
});

test('the search crosses decimal lengths (99 -> 100, 9999 -> 10000) correctly', () => {
  for (const ch of ['p1.1734567890123.20.0123456789abcdef.' + 'A'.repeat(43), 'q'.repeat(44), 'q'.repeat(50), 'q'.repeat(54)]) {
    for (const from of [95, 9990]) {
      const want = smallest(ch, 8, from);
      assert.equal(kernel.search(ch, 8, from, 1 << 20), want, `${ch.length} bytes from ${from}`);
    }
  }
});

test('zeroBits counts from the most significant bit of the first byte', () => {
  assert.equal(kernel.zeroBits(new Int32Array([0x0fffffff, 0, 0, 0, 0, 0, 0, 0])), 4);
  assert.equal(kernel.zeroBits(new Int32Array([0, 0x00800000, 0, 0, 0, 0, 0, 0])), 40);
  assert.equal(kernel.zeroBits(new Int32Array([-1, 0, 0, 0, 0, 0, 0, 0])), 0);
});

test('the search is fast enough for difficulty 20 in a browser (well over 500k hashes/s here)', () => {
  const ch = 'p1.1734567890123.20.0123456789abcdef0123456789abcdef.' + 'A'.repeat(43);
  const n = 300000;
  const t0 = process.hrtime.bigint();
  assert.equal(kernel.search(ch, 64, 0, n), -1);
  const secs = Number(process.hrtime.bigint() - t0) / 1e9;
  const rate = n / secs;
  // Loose: a loaded 2-core machine still does > 1M/s; this only catches an accidental slow path.
  assert.ok(rate > 150000, `${Math.round(rate)} hashes/s`);
});
