// placecast web client: plain JavaScript, no framework, no build step.
// Follows PROTOCOL.md (v1): binary snapshot, then live batches over /ws?since=<version>.
//
// For tests and scripting the page exposes a small read-mostly object, `window.placecast`
// (see the bottom of this file): the current version, the connection status, the palette index
// of any pixel, and helpers to move the view. It changes nothing a person could not change.
'use strict';

(function () {
  // ---------------------------------------------------------------- constants
  const URLS = {
    info: 'api/v1/canvas/info',
    snapshot: 'api/v1/canvas',
    session: 'api/v1/session',
    challenge: 'api/v1/session/challenge',
    place: 'api/v1/place',
    pixel: 'api/v1/pixel',
    historyInfo: 'api/v1/history/info',
    health: 'healthz',
    ws: 'ws',
  };
  const SESSION_KEY = 'placecast.session';
  const COLOR_KEY = 'placecast.color';
  const TEMPLATE_KEY = 'placecast.template';
  const NOTIFY_KEY = 'placecast.notify';
  const LONG_PRESS_MS = 500; // a touch held this long (without moving) inspects instead of placing
  const PIXEL_HISTORY = 10; // edits listed by the pixel panel's history
  const HISTORY_DEBOUNCE_MS = 150; // the history slider loads a version once it rests this long
  const HASH_THROTTLE_MS = 300; // the address (#x=&y=&zoom=) follows the view at most this often
  const TIME_TICK_MS = 15000; // "3 min ago" labels are refreshed this often
  const BACKOFF_MIN_MS = 1000;
  const BACKOFF_MAX_MS = 30000;
  const LIVED_MS = 10000; // a connection that lasted this long resets the backoff
  const GRID_SCALE = 8; // screen pixels per canvas pixel from which the grid is drawn
  const MAX_SCALE = 64;
  const HIDDEN_DISCONNECT_MS = 5 * 60 * 1000; // hidden this long: close the socket, catch up later
  const PLACE_TIMEOUT_MS = 10000;
  const FETCH_TIMEOUT_MS = 15000;
  const TOKEN_ERRORS = new Set(['missing_token', 'bad_token', 'expired_token']);
  // POST /api/v1/session answers that mean "solve a (new) proof-of-work challenge first".
  const PROOF_ERRORS = new Set(['proof_required', 'bad_proof', 'challenge_expired', 'challenge_used']);
  const PROOF_TRIES = 4; // challenges solved for one session before giving up
  const SESSION_WAITS = 3; // waits on 429 session_rate_limited before giving up
  const SESSION_WAIT_MAX_MS = 5 * 60 * 1000; // a longer retry_after_ms is reported, not waited out
  const POW_CHUNK = 32768; // nonces per unit of proof-of-work (about 15 ms of one core)
  const POW_MAX_WORKERS = 4;
  // Reconnect hints: the server's {"type":"reconnect"} message (drain), else these defaults.
  const GOING_AWAY_HINT = { afterMs: 0, jitterMs: 1000 }; // close 1001, or 1012 without a message
  const HINT_MAX_MS = 5 * 60 * 1000;
  const TRY_LATER_MIN_MS = 5000; // close 1013 without a usable hint in its reason

  const LITTLE_ENDIAN = new Uint8Array(new Uint32Array([1]).buffer)[0] === 1;

  // ---------------------------------------------------------------- elements
  const $ = (id) => document.getElementById(id);
  const el = {
    stage: $('stage'),
    view: $('view'),
    status: $('status'),
    statusText: $('status-text'),
    coords: $('coords'),
    cooldown: $('cooldown'),
    palette: $('palette'),
    message: $('message'),
    banner: $('banner'),
    zoomIn: $('zoom-in'),
    zoomOut: $('zoom-out'),
    zoomFit: $('zoom-fit'),
    tplImg: $('template-img'),
    toolInspect: $('tool-inspect'),
    toolHistory: $('tool-history'),
    toolTemplate: $('tool-template'),
    toolHelp: $('tool-help'),
    pixelPanel: $('pixel-panel'),
    pixelTitle: $('pixel-title'),
    pixelBody: $('pixel-body'),
    pixelNote: $('pixel-note'),
    pixelHistoryToggle: $('pixel-history-toggle'),
    pixelHistory: $('pixel-history'),
    templatePanel: $('template-panel'),
    templateForm: $('template-form'),
    templateUrl: $('template-url'),
    templateX: $('template-x'),
    templateY: $('template-y'),
    templateOpacity: $('template-opacity'),
    templateOpacityOut: $('template-opacity-out'),
    templateShow: $('template-show'),
    templateClear: $('template-clear'),
    templateStatus: $('template-status'),
    helpPanel: $('help-panel'),
    historyPanel: $('history-panel'),
    historyRange: $('history-range'),
    historyLabel: $('history-label'),
    historyLive: $('history-live'),
    notify: $('notify'),
  };
  const ctx = el.view.getContext('2d', { alpha: true });

  // ---------------------------------------------------------------- state
  const S = {
    // canvas
    width: 0,
    height: 0,
    palette: [],
    pal32: new Uint32Array(32),
    cooldownMs: 0,
    version: 0,
    loaded: false,
    indices: null, // Uint8Array: palette index per pixel
    image: null, // ImageData of the whole canvas
    img32: null, // Uint32Array view of image.data
    off: null, // offscreen canvas holding the whole image
    offCtx: null,
    dirty: null, // {x0, y0, x1, y1}, exclusive ends: part of `image` not yet in `off`
    needsDraw: false,
    raf: 0,
    frames: 0,
    // view: screen (CSS px, relative to the canvas element) = canvas px * scale + (ox, oy)
    scale: 1,
    ox: 0,
    oy: 0,
    cssW: 0,
    cssH: 0,
    dpr: 1,
    fitted: false,
    hover: null,
    color: 0,
    // connection
    status: 'connecting',
    statusText: 'Connecting…',
    ws: null,
    gen: 0,
    attempt: 0,
    retryTimer: 0,
    retryAt: 0,
    retryFull: false,
    retryReason: 'reconnecting',
    statusTimer: 0,
    failedOpens: 0,
    lastGapAt: 0,
    paused: false,
    userPaused: false,
    loads: 0, // snapshots loaded
    resizes: 0, // resize messages that changed the live model's size
    lastCloseCode: 0, // close code of the last connection the server (or the network) ended
    closes: [], // the last few closes: {code, reason, at, hint, delayMs}
    hiddenTimer: 0,
    // session and placing
    token: null,
    user: null,
    sessionPromise: null,
    // anonymous session: 'none' | 'verifying' (solving a proof of work) | 'waiting' (rate
    // limited until sessionRetryAt) | 'off' (the server hands out none: sign in) | 'failed' | 'ready'
    sessionState: 'none',
    sessionRetryAt: 0,
    proofNeeded: false, // the server asked for a proof of work: ask for a challenge straight away
    proofs: 0, // proofs of work solved
    lastProof: null, // {difficulty, nonce, hashes, ms, workers, verified}
    nextId: 1,
    pending: new Map(),
    placing: false,
    cooldownUntil: 0, // Date.now() based
    cooldownTimer: 0,
    messageTimer: 0,
    // the address: a view from #x=&y=&zoom= waiting for the canvas, and the throttled writer
    hashView: null,
    hashTimer: 0,
    lastHash: '', // the fragment as this page last read or wrote it
    timeTimer: 0,
    // pixel info: inspect mode, the selected pixel, the latest lookup
    inspect: { mode: false, sel: null, seq: 0, data: null, historyOpen: false },
    // history view: the canvas at version `shown` (the live model keeps following the socket)
    hist: {
      active: false, // showing a past version (placing is off)
      min: 0, max: 0, firstTs: null, lastTs: null, infoSeq: 0, infoError: '',
      want: null, // version the slider asks for
      shown: null, // version in `off`
      timeMs: null, // X-Canvas-Time-Ms of `shown`
      error: '',
      seq: 0, // bumped by Live: answers of an earlier visit are dropped
      timer: 0,
      inflight: false,
      width: 0, height: 0, indices: null, image: null, img32: null, off: null, offCtx: null,
    },
    // template overlay: settings (kept in localStorage) and the image's state
    tpl: { url: '', x: 0, y: 0, opacity: 0.5, show: true, state: 'none', width: 0, height: 0, seq: 0, inHash: false, error: '' },
    // cooldown notification
    notifyOn: false,
    notifyTimer: 0,
    notifications: 0, // notifications shown
  };

  // ---------------------------------------------------------------- helpers
  function clamp(v, lo, hi) { return v < lo ? lo : v > hi ? hi : v; }

  function u64(dv, off) {
    // Versions stay far below 2^53.
    return dv.getUint32(off, true) + dv.getUint32(off + 4, true) * 4294967296;
  }

  function apiUrl(path) { return new URL(path, location.href).toString(); }

  function wsUrl(path) {
    const u = new URL(path, location.href);
    u.protocol = u.protocol === 'https:' ? 'wss:' : 'ws:';
    return u.toString();
  }

  class NetError extends Error {}
  class HttpError extends Error {
    constructor(status, code, message, retryAfterMs) {
      super(message || ('HTTP ' + status));
      this.status = status;
      this.code = code;
      this.retryAfterMs = retryAfterMs;
    }
  }

  async function request(path, opts, timeoutMs) {
    const ctl = new AbortController();
    const timer = setTimeout(() => ctl.abort(), timeoutMs || FETCH_TIMEOUT_MS);
    try {
      return await fetch(apiUrl(path), Object.assign({}, opts, { signal: ctl.signal }));
    } catch (err) {
      throw new NetError(String(err && err.message || err));
    } finally {
      clearTimeout(timer);
    }
  }

  async function readError(res) {
    let code = 'http_' + res.status;
    let message = '';
    let retryAfterMs;
    try {
      const body = await res.json();
      if (body && typeof body.error === 'string') {
        // {"error":"<code>","message":"..."} (the history and pixel routes)
        code = body.error || code;
        message = typeof body.message === 'string' ? body.message : '';
      } else if (body && body.error) {
        code = body.error.code || code;
        message = body.error.message || '';
        if (typeof body.error.retry_after_ms === 'number') retryAfterMs = body.error.retry_after_ms;
      }
      if (body && typeof body.retry_after_ms === 'number') retryAfterMs = body.retry_after_ms;
    } catch (_) { /* not JSON */ }
    if (retryAfterMs === undefined) {
      const ra = Number(res.headers.get('Retry-After'));
      if (Number.isFinite(ra) && ra >= 0) retryAfterMs = ra * 1000;
    }
    return new HttpError(res.status, code, message, retryAfterMs);
  }

  function parseColor(s) {
    let m = /^#?([0-9a-f]{6})([0-9a-f]{2})?$/i.exec(String(s).trim());
    if (m) {
      const n = parseInt(m[1], 16);
      return [n >> 16 & 255, n >> 8 & 255, n & 255, m[2] ? parseInt(m[2], 16) : 255];
    }
    m = /^#?([0-9a-f])([0-9a-f])([0-9a-f])$/i.exec(String(s).trim());
    if (m) return [parseInt(m[1] + m[1], 16), parseInt(m[2] + m[2], 16), parseInt(m[3] + m[3], 16), 255];
    return [255, 0, 255, 255];
  }

  function packRGBA(c) {
    const [r, g, b, a] = c;
    return LITTLE_ENDIAN
      ? ((a << 24) | (b << 16) | (g << 8) | r) >>> 0
      : ((r << 24) | (g << 16) | (b << 8) | a) >>> 0;
  }

  function plural(n, word) { return n + ' ' + word + (n === 1 ? '' : 's'); }

  function fmtDuration(ms) {
    const s = Math.max(1, Math.ceil(ms / 1000));
    if (s < 60) return plural(s, 'second');
    const m = Math.floor(s / 60);
    const r = s % 60;
    return plural(m, 'minute') + (r ? ' ' + plural(r, 'second') : '');
  }

  function fmtClock(ms) {
    const s = Math.max(0, Math.ceil(ms / 1000));
    if (s < 60) return s + ' s';
    const h = Math.floor(s / 3600);
    const m = Math.floor(s / 60) % 60;
    const ss = String(s % 60).padStart(2, '0');
    return h ? h + ':' + String(m).padStart(2, '0') + ':' + ss : m + ':' + ss;
  }

  function storageGet(key) { try { return localStorage.getItem(key); } catch (_) { return null; } }
  function storageSet(key, v) { try { localStorage.setItem(key, v); } catch (_) { /* private mode */ } }
  function storageDel(key) { try { localStorage.removeItem(key); } catch (_) { /* private mode */ } }

  // ---------------------------------------------------------------- status and messages
  function setStatus(kind, text) {
    S.status = kind;
    S.statusText = text;
    el.status.dataset.state = kind;
    if (el.statusText.textContent !== text) el.statusText.textContent = text;
    const banner = kind === 'unreachable'
      ? (navigator.onLine === false
        ? "You're offline. The canvas may be out of date; it will catch up when you're back."
        : "Can't reach the server. The canvas may be out of date; reconnecting automatically.")
      : kind === 'error' ? 'The server has a problem. Retrying automatically.' : '';
    if (el.banner.textContent !== banner) el.banner.textContent = banner;
    el.banner.hidden = !banner;
  }

  function showMessage(text, kind, ms) {
    clearTimeout(S.messageTimer);
    el.message.textContent = text;
    el.message.dataset.kind = kind || 'error';
    el.message.hidden = false;
    S.messageTimer = setTimeout(hideMessage, ms || 7000);
  }

  function hideMessage() {
    clearTimeout(S.messageTimer);
    el.message.hidden = true;
  }

  // ---------------------------------------------------------------- image state
  // A model of w x h pixels (all color 0, not yet painted). The view is refitted only for the
  // first model: a later one (a reload, a resize) keeps the user's view, since a pixel's (x, y)
  // stays where it was when the canvas grows.
  function allocate(w, h) {
    const n = w * h;
    const first = !S.indices;
    S.width = w;
    S.height = h;
    S.indices = new Uint8Array(n);
    S.image = new ImageData(w, h);
    S.img32 = new Uint32Array(S.image.data.buffer);
    S.off = document.createElement('canvas');
    S.off.width = w;
    S.off.height = h;
    S.offCtx = S.off.getContext('2d');
    if (first) S.fitted = false;
  }

  // Grows (or, defensively, crops) the live model to w x h: every pixel keeps its (x, y), rows
  // are laid out again at the new width, new pixels are color 0. Everything is redrawn; the
  // view stays where the user left it.
  function resizeModel(w, h) {
    const ow = S.width;
    const oh = S.height;
    if (w === ow && h === oh) return;
    const oldIdx = S.indices;
    const oldImg = S.img32;
    allocate(w, h);
    const idx = S.indices;
    const img = S.img32;
    img.fill(S.pal32[0]);
    const cw = Math.min(ow, w);
    const ch = Math.min(oh, h);
    if (cw === w && cw === ow) {
      idx.set(oldIdx.subarray(0, ch * w));
      img.set(oldImg.subarray(0, ch * w));
    } else {
      for (let y = 0; y < ch; y++) {
        idx.set(oldIdx.subarray(y * ow, y * ow + cw), y * w);
        img.set(oldImg.subarray(y * ow, y * ow + cw), y * w);
      }
    }
    if (S.hover && (S.hover.x >= w || S.hover.y >= h)) setHover(null);
    S.dirty = null;
    markDirty(0, 0, w, h);
    layout(); // fits only a canvas never fitted; clamps the view to the new size
    S.resizes++;
  }

  function applyInfo(info) {
    const palette = Array.isArray(info.palette) ? info.palette.slice(0, 32).map(String) : [];
    const changed = palette.join() !== S.palette.join();
    S.palette = palette;
    for (let c = 0; c < 32; c++) {
      S.pal32[c] = packRGBA(c < palette.length ? parseColor(palette[c]) : [255, 0, 255, 255]);
    }
    if (typeof info.cooldown_ms === 'number') S.cooldownMs = info.cooldown_ms;
    if (changed) {
      if (S.color >= palette.length) S.color = 0;
      buildPalette();
      if (S.indices) repaintAll();
    }
  }

  function repaintAll() {
    const idx = S.indices;
    const img = S.img32;
    const pal = S.pal32;
    for (let i = 0; i < idx.length; i++) img[i] = pal[idx[i]];
    markDirty(0, 0, S.width, S.height);
    const H = S.hist;
    if (H.indices) {
      for (let i = 0; i < H.indices.length; i++) H.img32[i] = pal[H.indices[i]];
      H.offCtx.putImageData(H.image, 0, 0);
    }
  }

  function applySnapshot(buf) {
    S.version = decodeSnapshot(buf, S, allocate);
    S.loaded = true;
    markDirty(0, 0, S.width, S.height);
    layout();
  }

  // Decodes a binary snapshot (PROTOCOL.md) into the model `m` ({width, height, indices, img32}:
  // the live canvas or the history view), after alloc(w, h) when its size differs. Returns the
  // snapshot's version.
  function decodeSnapshot(buf, m, alloc) {
    if (buf.byteLength < 24) throw new Error('snapshot too short');
    const dv = new DataView(buf);
    if (dv.getUint32(0, false) !== 0x50435331) throw new Error('not a placecast snapshot'); // "PCS1"
    const bpp = dv.getUint8(4);
    const w = dv.getUint32(8, true);
    const h = dv.getUint32(12, true);
    const version = u64(dv, 16);
    const n = w * h;
    if (bpp !== 4 && bpp !== 8) throw new Error('unsupported bits per pixel ' + bpp);
    if (!w || !h || n > 1 << 27) throw new Error('bad canvas size');
    const need = bpp === 4 ? Math.ceil(n / 2) : n;
    if (buf.byteLength < 24 + need) throw new Error('snapshot truncated');
    if (w !== m.width || h !== m.height || !m.indices) alloc(w, h);
    const src = new Uint8Array(buf, 24, need);
    const idx = m.indices;
    const img = m.img32;
    const pal = S.pal32;
    if (bpp === 8) {
      for (let i = 0; i < n; i++) {
        const c = src[i] & 31;
        idx[i] = c;
        img[i] = pal[c];
      }
    } else {
      const pairs = n >> 1;
      for (let k = 0, i = 0; k < pairs; k++, i += 2) {
        const b = src[k];
        const hi = b >> 4;
        const lo = b & 15;
        idx[i] = hi;
        img[i] = pal[hi];
        idx[i + 1] = lo;
        img[i + 1] = pal[lo];
      }
      if (n & 1) {
        const c = src[pairs] >> 4;
        idx[n - 1] = c;
        img[n - 1] = pal[c];
      }
    }
    return version;
  }

  // Applies one binary stream message: a batch (0x01) or a resize (0x02). Returns 'ok',
  // 'stale' (already applied), 'gap', 'bad' or 'ignored' (a type this client does not know).
  function applyBatch(buf) {
    if (buf.byteLength < 1) return 'bad';
    const dv = new DataView(buf);
    const type = dv.getUint8(0);
    if (type === 0x02) return applyResize(dv, buf);
    if (type !== 0x01) return 'ignored';
    if (buf.byteLength < 24) return 'bad';
    const stride = dv.getUint8(1);
    if (stride < 4) return 'bad';
    const from = u64(dv, 4);
    const to = u64(dv, 12);
    const count = dv.getUint32(20, true);
    if (to < from || 24 + count * stride > buf.byteLength) return 'bad';
    if (!S.indices) return 'gap';
    if (from > S.version) return 'gap';
    // from < version never happens on one connection; if it ever does, re-applying the batch
    // in order still yields the canvas at `to`, and a batch entirely behind us is skipped.
    if (from < S.version && to <= S.version) return 'stale';

    const w = S.width;
    const n = S.indices.length;
    const idx = S.indices;
    const img = S.img32;
    const pal = S.pal32;
    let x0 = w;
    let y0 = S.height;
    let x1 = -1;
    let y1 = -1;
    const put = (e) => {
      const i = e >>> 5;
      if (i >= n) return;
      const c = e & 31;
      idx[i] = c;
      img[i] = pal[c];
      const y = (i / w) | 0;
      const x = i - y * w;
      if (x < x0) x0 = x;
      if (x > x1) x1 = x;
      if (y < y0) y0 = y;
      if (y > y1) y1 = y;
    };
    if (stride === 4 && LITTLE_ENDIAN) {
      const edits = new Uint32Array(buf, 24, count);
      for (let k = 0; k < count; k++) put(edits[k]);
    } else {
      for (let k = 0, off = 24; k < count; k++, off += stride) put(dv.getUint32(off, true));
    }
    S.version = to;
    if (x1 >= 0) markDirty(x0, y0, x1 + 1, y1 + 1);
    return 'ok';
  }

  // The resize message (PROTOCOL.md): covers (from, to] like a batch; from `to` on the canvas
  // is width x height and the batches' indexes use the new width. Same order rule as a batch:
  // applied only from our version, a gap reloads the snapshot.
  function applyResize(dv, buf) {
    if (buf.byteLength < 28) return 'bad';
    const from = u64(dv, 4);
    const to = u64(dv, 12);
    const w = dv.getUint32(20, true);
    const h = dv.getUint32(24, true);
    if (to < from || !w || !h || w * h > 1 << 27) return 'bad';
    if (!S.indices) return 'gap';
    if (from > S.version) return 'gap';
    if (from < S.version && to <= S.version) return 'stale';
    resizeModel(w, h);
    S.version = to;
    return 'ok';
  }

  // ---------------------------------------------------------------- drawing
  function markDirty(x0, y0, x1, y1) {
    const d = S.dirty;
    if (!d) S.dirty = { x0, y0, x1, y1 };
    else {
      if (x0 < d.x0) d.x0 = x0;
      if (y0 < d.y0) d.y0 = y0;
      if (x1 > d.x1) d.x1 = x1;
      if (y1 > d.y1) d.y1 = y1;
    }
    requestDraw();
  }

  function requestDraw() {
    S.needsDraw = true;
    // Hidden tab: the data is up to date, nothing is drawn until it is shown again.
    if (S.raf || document.hidden) return;
    S.raf = requestAnimationFrame(frame);
  }

  function frame() {
    S.raf = 0;
    if (!S.needsDraw) return;
    S.needsDraw = false;
    const d = S.dirty;
    if (d && S.offCtx) {
      S.dirty = null;
      S.offCtx.putImageData(S.image, 0, 0, d.x0, d.y0, d.x1 - d.x0, d.y1 - d.y0);
    }
    render();
    positionTemplate();
    S.frames++;
  }

  function render() {
    const W = el.view.width;
    const H = el.view.height;
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.clearRect(0, 0, W, H);
    if (!S.off || !S.cssW) return;
    // The history view draws the past version; the live model stays up to date underneath.
    const hv = S.hist;
    const src = hv.active && hv.shown !== null && hv.off ? hv.off : S.off;
    const dpr = S.dpr;
    const s = S.scale;
    const sx0 = Math.max(0, Math.floor(-S.ox / s));
    const sy0 = Math.max(0, Math.floor(-S.oy / s));
    // A past version may be smaller than the live canvas (it grew since): draw it at its size.
    const cw = Math.min(S.width, src.width);
    const ch = Math.min(S.height, src.height);
    const sx1 = Math.min(cw, Math.ceil((S.cssW - S.ox) / s));
    const sy1 = Math.min(ch, Math.ceil((S.cssH - S.oy) / s));
    if (sx1 <= sx0 || sy1 <= sy0) return;

    // A soft edge around the canvas so it stands out from the background.
    ctx.fillStyle = 'rgba(0,0,0,0.35)';
    ctx.fillRect((S.ox - 1) * dpr, (S.oy - 1) * dpr, (cw * s + 2) * dpr, (ch * s + 2) * dpr);

    ctx.imageSmoothingEnabled = false;
    ctx.drawImage(src, sx0, sy0, sx1 - sx0, sy1 - sy0,
      (S.ox + sx0 * s) * dpr, (S.oy + sy0 * s) * dpr, (sx1 - sx0) * s * dpr, (sy1 - sy0) * s * dpr);

    if (s >= GRID_SCALE) {
      ctx.beginPath();
      const top = Math.round((S.oy + sy0 * s) * dpr);
      const bottom = Math.round((S.oy + sy1 * s) * dpr);
      const left = Math.round((S.ox + sx0 * s) * dpr);
      const right = Math.round((S.ox + sx1 * s) * dpr);
      for (let x = sx0; x <= sx1; x++) {
        const X = Math.round((S.ox + x * s) * dpr) + 0.5;
        ctx.moveTo(X, top);
        ctx.lineTo(X, bottom);
      }
      for (let y = sy0; y <= sy1; y++) {
        const Y = Math.round((S.oy + y * s) * dpr) + 0.5;
        ctx.moveTo(left, Y);
        ctx.lineTo(right, Y);
      }
      ctx.lineWidth = 1;
      ctx.strokeStyle = 'rgba(100,100,110,0.35)';
      ctx.stroke();
    }

    const h = S.hover;
    if (h) {
      const lw = Math.max(1, Math.round(dpr));
      const x = Math.round((S.ox + h.x * s) * dpr);
      const y = Math.round((S.oy + h.y * s) * dpr);
      const size = Math.max(1, Math.round(s * dpr));
      ctx.lineWidth = lw;
      ctx.strokeStyle = '#000';
      ctx.strokeRect(x - lw * 1.5, y - lw * 1.5, size + lw * 3, size + lw * 3);
      ctx.strokeStyle = '#fff';
      ctx.strokeRect(x - lw * 0.5, y - lw * 0.5, size + lw, size + lw);
    }

    const sel = S.inspect.sel;
    if (sel && !el.pixelPanel.hidden) {
      // The inspected pixel: a yellow frame a little outside the hover frame.
      const lw = Math.max(2, Math.round(2 * dpr));
      const x = Math.round((S.ox + sel.x * s) * dpr);
      const y = Math.round((S.oy + sel.y * s) * dpr);
      const size = Math.max(1, Math.round(s * dpr));
      ctx.lineWidth = lw;
      ctx.strokeStyle = '#000';
      ctx.strokeRect(x - lw * 2.5, y - lw * 2.5, size + lw * 5, size + lw * 5);
      ctx.strokeStyle = '#ffd84d';
      ctx.strokeRect(x - lw * 1.5, y - lw * 1.5, size + lw * 3, size + lw * 3);
    }
  }

  // ---------------------------------------------------------------- view (pan and zoom)
  function layout() {
    const r = el.stage.getBoundingClientRect();
    const dpr = window.devicePixelRatio || 1;
    const cssW = Math.max(1, Math.round(r.width));
    const cssH = Math.max(1, Math.round(r.height));
    if (cssW !== S.cssW || cssH !== S.cssH || dpr !== S.dpr) {
      S.cssW = cssW;
      S.cssH = cssH;
      S.dpr = dpr;
      el.view.width = Math.round(cssW * dpr);
      el.view.height = Math.round(cssH * dpr);
    }
    if (!S.fitted && S.width) fitView();
    if (S.hashView && S.width) applyHashView();
    clampView();
    requestDraw();
  }

  function fitScale() {
    if (!S.width || !S.cssW) return 1;
    return Math.min(S.cssW / S.width, S.cssH / S.height);
  }

  function minScale() { return Math.min(1, fitScale() * 0.5); }

  function fitView() {
    if (!S.width || !S.cssW) return;
    S.fitted = true;
    S.scale = clamp(fitScale() * 0.96, minScale(), MAX_SCALE);
    S.ox = (S.cssW - S.width * S.scale) / 2;
    S.oy = (S.cssH - S.height * S.scale) / 2;
    requestDraw();
  }

  function userFit() {
    fitView();
    scheduleHash();
  }

  function clampView() {
    if (!S.width) return;
    // Keep the canvas over the middle of the view so it can never be lost.
    const iw = S.width * S.scale;
    const ih = S.height * S.scale;
    S.ox = clamp(S.ox, S.cssW / 2 - iw, S.cssW / 2);
    S.oy = clamp(S.oy, S.cssH / 2 - ih, S.cssH / 2);
  }

  function zoomAt(cx, cy, scale) {
    const ns = clamp(scale, minScale(), MAX_SCALE);
    const ix = (cx - S.ox) / S.scale;
    const iy = (cy - S.oy) / S.scale;
    S.scale = ns;
    S.ox = cx - ix * ns;
    S.oy = cy - iy * ns;
    clampView();
    requestDraw();
    scheduleHash();
  }

  function centerOn(x, y, scale) {
    if (scale) S.scale = clamp(scale, minScale(), MAX_SCALE);
    S.ox = S.cssW / 2 - (x + 0.5) * S.scale;
    S.oy = S.cssH / 2 - (y + 0.5) * S.scale;
    clampView();
    requestDraw();
    scheduleHash();
  }

  // The pixel at the middle of the view, and the zoom, as the address shows them.
  function viewCenter() {
    return {
      x: clamp(Math.floor((S.cssW / 2 - S.ox) / S.scale), 0, Math.max(0, S.width - 1)),
      y: clamp(Math.floor((S.cssH / 2 - S.oy) / S.scale), 0, Math.max(0, S.height - 1)),
      zoom: Number(S.scale.toPrecision(3)),
    };
  }

  function pixelAt(cx, cy) {
    if (!S.width) return null;
    const x = Math.floor((cx - S.ox) / S.scale);
    const y = Math.floor((cy - S.oy) / S.scale);
    if (x < 0 || y < 0 || x >= S.width || y >= S.height) return null;
    return { x, y };
  }

  function setHover(p) {
    const h = S.hover;
    if ((h && p && h.x === p.x && h.y === p.y) || (!h && !p)) return;
    S.hover = p;
    el.coords.textContent = p ? 'x ' + p.x + ', y ' + p.y : '\u00a0';
    requestDraw();
  }

  function localPoint(e) {
    const r = el.view.getBoundingClientRect();
    return { x: e.clientX - r.left, y: e.clientY - r.top };
  }

  // ---------------------------------------------------------------- input
  const pointers = new Map();
  let gesture = null;

  function startPan(id, p, canTap, touch) {
    gesture = { type: 'pan', id, sx: p.x, sy: p.y, ox: S.ox, oy: S.oy, moved: !canTap, tap: canTap, touch };
  }

  function startPinch() {
    const [a, b] = Array.from(pointers.values());
    const mx = (a.x + b.x) / 2;
    const my = (a.y + b.y) / 2;
    gesture = {
      type: 'pinch',
      dist: Math.max(1, Math.hypot(a.x - b.x, a.y - b.y)),
      scale: S.scale,
      ix: (mx - S.ox) / S.scale,
      iy: (my - S.oy) / S.scale,
    };
  }

  function onPointerDown(e) {
    if (e.pointerType === 'mouse' && e.button > 2) return;
    e.preventDefault();
    try { el.view.setPointerCapture(e.pointerId); } catch (_) { /* already released */ }
    const p = localPoint(e);
    pointers.set(e.pointerId, p);
    if (pointers.size === 1) {
      // The left button (or a tap) places; the right button, or Alt with the left, inspects.
      // Either drags to pan.
      const touch = e.pointerType !== 'mouse';
      startPan(e.pointerId, p, e.button === 0 || e.button === 2, touch);
      gesture.inspect = e.button === 2 || e.altKey;
      if (touch) {
        setHover(pixelAt(p.x, p.y));
        startLongPress(gesture, p);
      }
    } else if (pointers.size === 2) {
      if (gesture) clearTimeout(gesture.pressTimer);
      startPinch();
    }
  }

  // A touch held still for LONG_PRESS_MS inspects the pixel under it; lifting it then places
  // nothing. A shorter tap places as before.
  function startLongPress(g, p) {
    g.pressTimer = setTimeout(() => {
      g.pressTimer = 0;
      if (gesture !== g || g.moved || !g.tap || pointers.size !== 1) return;
      const px = pixelAt(p.x, p.y);
      if (!px) return;
      g.tap = false;
      try { if (navigator.vibrate) navigator.vibrate(15); } catch (_) { /* not allowed */ }
      inspectAt(px.x, px.y);
    }, LONG_PRESS_MS);
  }

  function onPointerMove(e) {
    const p = localPoint(e);
    if (e.pointerType === 'mouse' || e.pointerType === 'pen') setHover(pixelAt(p.x, p.y));
    if (!pointers.has(e.pointerId)) return;
    pointers.set(e.pointerId, p);
    if (!gesture) return;
    if (gesture.type === 'pan' && gesture.id === e.pointerId) {
      const dx = p.x - gesture.sx;
      const dy = p.y - gesture.sy;
      if (!gesture.moved && Math.hypot(dx, dy) > (gesture.touch ? 10 : 4)) {
        gesture.moved = true;
        clearTimeout(gesture.pressTimer);
        el.view.classList.add('panning');
      }
      if (gesture.moved) {
        S.ox = gesture.ox + dx;
        S.oy = gesture.oy + dy;
        clampView();
        requestDraw();
        scheduleHash();
        if (gesture.touch) setHover(pixelAt(p.x, p.y));
      }
    } else if (gesture.type === 'pinch' && pointers.size >= 2) {
      const [a, b] = Array.from(pointers.values());
      const mx = (a.x + b.x) / 2;
      const my = (a.y + b.y) / 2;
      const ns = clamp(gesture.scale * Math.hypot(a.x - b.x, a.y - b.y) / gesture.dist, minScale(), MAX_SCALE);
      S.scale = ns;
      S.ox = mx - gesture.ix * ns;
      S.oy = my - gesture.iy * ns;
      clampView();
      requestDraw();
      scheduleHash();
    }
  }

  function onPointerUp(e) {
    const p = pointers.get(e.pointerId) || localPoint(e);
    pointers.delete(e.pointerId);
    const g = gesture;
    if (g && g.type === 'pan' && g.id === e.pointerId) {
      gesture = null;
      clearTimeout(g.pressTimer);
      el.view.classList.remove('panning');
      if (e.type === 'pointerup' && g.tap && !g.moved) {
        const px = pixelAt(p.x, p.y);
        if (px) {
          setHover(px);
          if (g.inspect || S.inspect.mode) inspectAt(px.x, px.y);
          else placeAt(px.x, px.y);
        }
      }
    } else if (g && g.type === 'pinch') {
      if (pointers.size === 1) {
        const [[id, q]] = Array.from(pointers.entries());
        startPan(id, q, false, true);
      } else if (pointers.size === 0) {
        gesture = null;
      } else {
        startPinch();
      }
    }
    if (pointers.size === 0) {
      if (gesture) clearTimeout(gesture.pressTimer);
      gesture = null;
      el.view.classList.remove('panning');
    }
  }

  function onWheel(e) {
    e.preventDefault();
    let dy = e.deltaY;
    if (e.deltaMode === 1) dy *= 16;
    else if (e.deltaMode === 2) dy *= S.cssH;
    if (e.ctrlKey) dy *= 4; // a trackpad pinch arrives as ctrl+wheel with small deltas
    const p = localPoint(e);
    zoomAt(p.x, p.y, S.scale * Math.exp(-clamp(dy, -300, 300) * 0.0025));
  }

  function onKey(e) {
    if (e.target && /^(INPUT|TEXTAREA|SELECT)$/.test(e.target.tagName)) return;
    if (e.ctrlKey || e.metaKey || e.altKey) return;
    const step = 60;
    switch (e.key) {
      case '+': case '=': zoomAt(S.cssW / 2, S.cssH / 2, S.scale * 1.5); break;
      case '-': case '_': zoomAt(S.cssW / 2, S.cssH / 2, S.scale / 1.5); break;
      case '0': userFit(); break;
      case 'ArrowLeft': S.ox += step; break;
      case 'ArrowRight': S.ox -= step; break;
      case 'ArrowUp': S.oy += step; break;
      case 'ArrowDown': S.oy -= step; break;
      case 'i': case 'I': setInspectMode(!S.inspect.mode); e.preventDefault(); return;
      case 'Escape': closePanels(); return;
      default: return;
    }
    e.preventDefault();
    clampView();
    requestDraw();
    scheduleHash();
  }

  // ---------------------------------------------------------------- palette and cooldown
  function buildPalette() {
    el.palette.textContent = '';
    S.palette.forEach((hex, i) => {
      const b = document.createElement('button');
      b.type = 'button';
      b.className = 'swatch';
      b.style.background = hex;
      b.title = hex;
      b.dataset.index = String(i);
      b.setAttribute('role', 'radio');
      b.setAttribute('aria-label', 'Color ' + (i + 1) + ' (' + hex + ')');
      b.setAttribute('aria-checked', String(i === S.color));
      b.addEventListener('click', () => selectColor(i));
      el.palette.appendChild(b);
    });
  }

  function selectColor(i) {
    if (!(i >= 0 && i < S.palette.length)) return;
    S.color = i;
    storageSet(COLOR_KEY, String(i));
    for (const b of el.palette.children) b.setAttribute('aria-checked', String(Number(b.dataset.index) === i));
  }

  function setCooldown(ms) {
    S.cooldownUntil = ms > 0 ? Date.now() + ms : 0;
    updateCooldown();
    scheduleNotify();
  }

  function updateCooldown() {
    clearTimeout(S.cooldownTimer);
    S.cooldownTimer = 0;
    const left = S.cooldownUntil - Date.now();
    if (S.hist.active) {
      // Placing is off in the history view; the countdown comes back with Live.
      const v = S.hist.want !== null ? S.hist.want : S.hist.shown;
      el.cooldown.textContent = 'Viewing version ' + v + ': press Live to place pixels';
      el.cooldown.dataset.state = 'history';
      document.body.classList.toggle('cooling', left > 0);
      return;
    }
    if (left > 0) {
      el.cooldown.textContent = 'Next pixel in ' + fmtClock(left);
      el.cooldown.dataset.state = 'cooling';
      document.body.classList.add('cooling');
      // Tick when the shown second changes; no ticking while the tab is hidden.
      if (!document.hidden) S.cooldownTimer = setTimeout(updateCooldown, ((left - 1) % 1000) + 1);
    } else {
      S.cooldownUntil = 0;
      document.body.classList.remove('cooling');
      const wait = S.sessionRetryAt - Date.now();
      if (S.sessionState === 'verifying') {
        el.cooldown.textContent = "Verifying you're human…";
        el.cooldown.dataset.state = 'verifying';
      } else if (S.sessionState === 'waiting' && wait > 0) {
        el.cooldown.textContent = 'Many new visitors from your network: your session starts in ' + fmtClock(wait);
        el.cooldown.dataset.state = 'waiting';
        if (!document.hidden) S.cooldownTimer = setTimeout(updateCooldown, ((wait - 1) % 1000) + 1);
      } else if (S.sessionState === 'off' && !S.token) {
        el.cooldown.textContent = 'Sign in to place pixels';
        el.cooldown.dataset.state = 'signin';
      } else {
        el.cooldown.textContent = !S.loaded ? '\u00a0' : S.inspect.mode
          ? 'Inspect mode: click or tap a pixel to see who placed it'
          : 'Ready: pick a color, then click or tap a pixel';
        el.cooldown.dataset.state = 'ready';
      }
    }
  }

  function cooldownFromNextAt(nextAtMs, cooldownMs) {
    let left = nextAtMs - Date.now();
    const cd = typeof cooldownMs === 'number' ? cooldownMs : S.cooldownMs;
    // If this device's clock is clearly off from the server's, trust the cooldown length.
    if (cd > 0 && (left > cd + 5000 || left < -5000)) left = cd;
    return Math.max(0, left);
  }

  // ---------------------------------------------------------------- session
  function loadStoredSession() {
    const raw = storageGet(SESSION_KEY);
    if (!raw) return;
    try {
      const s = JSON.parse(raw);
      if (!s || typeof s.token !== 'string' || !s.token) return;
      if (s.expires_at && s.expires_at * 1000 < Date.now() + 60000) return;
      S.token = s.token;
      S.user = s.user || null;
    } catch (_) { /* ignore */ }
  }

  // A sign-in service hands the page its token in the address's fragment (never sent to a server):
  // https://canvas.example/#token=<user>.<expires>.<sig>. It is stored like an anonymous
  // session's and removed from the address bar.
  function tokenFromFragment() {
    const m = /(?:^#|&)token=([^&]*)/.exec(location.hash);
    if (!m) return;
    let token = '';
    try { token = decodeURIComponent(m[1]); } catch (_) { /* malformed */ }
    const rest = location.hash.slice(1).split('&').filter((p) => !/^token=/.test(p)).join('&');
    try {
      history.replaceState(history.state, '', location.pathname + location.search + (rest ? '#' + rest : ''));
    } catch (_) { /* sandboxed */ }
    const parts = token.split('.');
    if (parts.length !== 3 || !/^[A-Za-z0-9_-]{1,64}$/.test(parts[0]) || !/^\d{1,20}$/.test(parts[1]) || !parts[2]) {
      console.warn('placecast: ignoring a malformed token in the address');
      return;
    }
    if (S.token === token) return;
    S.token = token;
    S.user = parts[0];
    S.sessionPromise = null;
    storageSet(SESSION_KEY, JSON.stringify({ token, user: parts[0], expires_at: Number(parts[1]) }));
    authSocket();
    updateCooldown();
  }

  function dropToken() {
    S.token = null;
    S.user = null;
    S.sessionPromise = null;
    storageDel(SESSION_KEY);
  }

  function ensureToken() {
    if (S.token) return Promise.resolve(S.token);
    if (!S.sessionPromise) {
      S.sessionPromise = (async () => {
        const body = await createSession();
        if (!body || typeof body.token !== 'string') throw new Error('no token in the session answer');
        S.token = body.token;
        S.user = body.user || null;
        storageSet(SESSION_KEY, JSON.stringify({ token: body.token, user: body.user, expires_at: body.expires_at || 0 }));
        setSessionState('ready');
        authSocket();
        return body.token;
      })();
      S.sessionPromise.catch((err) => {
        S.sessionPromise = null;
        if (S.sessionState !== 'off') setSessionState('failed');
        if (!(err instanceof HttpError) && !(err instanceof NetError)) console.warn('placecast: no session:', err);
      });
    }
    return S.sessionPromise;
  }

  // A session in the background (page load, connection up): not when the server said it hands
  // out none, nor while waiting out its rate limit; a click on the canvas still tries.
  function backgroundSession() {
    if (S.token || S.sessionState === 'off') return;
    ensureToken().catch(() => {});
  }

  function setSessionState(state) {
    S.sessionState = state;
    updateCooldown();
  }

  // POST /api/v1/session, with a proof of work when the server asks for one (--anonymous-sessions
  // proof): GET a challenge, solve it in workers, POST {challenge, nonce}. A used or expired
  // challenge gets a new one (a few times); 429 session_rate_limited is waited out (a few times,
  // if the wait is short enough). Resolves to the session answer, or throws an HttpError/NetError.
  async function createSession() {
    let proof = null;
    let solved = 0;
    let waits = 0;
    for (;;) {
      if (S.proofNeeded && !proof) {
        if (solved >= PROOF_TRIES) throw new HttpError(400, 'proof_failed', 'the proof of work was refused ' + solved + ' times');
        solved++;
        proof = await solveChallenge();
      }
      const res = await request(URLS.session, proof
        ? { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(proof) }
        : { method: 'POST' });
      if (res.ok) return res.json();
      const err = await readError(res);
      if (PROOF_ERRORS.has(err.code)) {
        S.proofNeeded = true;
        proof = null; // used, expired, refused, or none sent: a new challenge
        continue;
      }
      if (err.code === 'anonymous_sessions_off') {
        setSessionState('off');
        throw err;
      }
      if (res.status === 429 && waits < SESSION_WAITS) {
        const wait = err.retryAfterMs !== undefined ? err.retryAfterMs : 5000;
        if (wait <= SESSION_WAIT_MAX_MS) {
          waits++;
          S.sessionRetryAt = Date.now() + wait;
          setSessionState('waiting');
          await sleep(wait + Math.random() * 250);
          S.sessionRetryAt = 0;
          setSessionState('none');
          // A solved challenge the server refused for the rate alone may still be good; if it
          // expired meanwhile, the server says so and a new one is solved.
          continue;
        }
      }
      throw err;
    }
  }

  function sleep(ms) { return new Promise((r) => setTimeout(r, ms)); }

  async function solveChallenge() {
    const res = await request(URLS.challenge, { cache: 'no-store' });
    if (!res.ok) {
      const err = await readError(res);
      if (err.code === 'anonymous_sessions_off') setSessionState('off');
      throw err;
    }
    const ch = await res.json();
    if (!ch || typeof ch.challenge !== 'string' || !(ch.difficulty >= 0 && ch.difficulty <= 64)) {
      throw new HttpError(res.status, 'bad_challenge', 'the server sent a challenge this page cannot read');
    }
    if (ch.algorithm && ch.algorithm !== 'sha256-leading-zero-bits') {
      throw new HttpError(res.status, 'bad_challenge', 'unknown proof-of-work algorithm ' + ch.algorithm);
    }
    setSessionState('verifying');
    try {
      const r = await solveProof(ch.challenge, ch.difficulty);
      S.proofs++;
      S.lastProof = r;
      return { challenge: ch.challenge, nonce: r.nonce };
    } finally {
      if (S.sessionState === 'verifying') setSessionState('none');
    }
  }

  // BEGIN POW KERNEL
  // Proof-of-work kernel: a small SHA-256 and the nonce search. Self-contained (no closure over
  // the rest of this file) because its source text also runs in a Web Worker made from a Blob.
  function powKernel() {
    const K = new Int32Array([
      0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
      0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
      0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
      0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
      0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
      0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
      0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
      0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
    ]);
    const IV = [0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19];
    const W = new Int32Array(64);

    // One SHA-256 block: H (8 words) updated in place from M[mo .. mo+16).
    function compress(H, M, mo) {
      for (let i = 0; i < 16; i++) W[i] = M[mo + i];
      for (let i = 16; i < 64; i++) {
        const x = W[i - 15];
        const y = W[i - 2];
        const s0 = ((x >>> 7) | (x << 25)) ^ ((x >>> 18) | (x << 14)) ^ (x >>> 3);
        const s1 = ((y >>> 17) | (y << 15)) ^ ((y >>> 19) | (y << 13)) ^ (y >>> 10);
        W[i] = (W[i - 16] + s0 + W[i - 7] + s1) | 0;
      }
      let a = H[0]; let b = H[1]; let c = H[2]; let d = H[3];
      let e = H[4]; let f = H[5]; let g = H[6]; let h = H[7];
      for (let i = 0; i < 64; i++) {
        const s1 = ((e >>> 6) | (e << 26)) ^ ((e >>> 11) | (e << 21)) ^ ((e >>> 25) | (e << 7));
        const t1 = (h + s1 + ((e & f) ^ (~e & g)) + K[i] + W[i]) | 0;
        const s0 = ((a >>> 2) | (a << 30)) ^ ((a >>> 13) | (a << 19)) ^ ((a >>> 22) | (a << 10));
        const t2 = (s0 + ((a & b) ^ (a & c) ^ (b & c))) | 0;
        h = g; g = f; f = e; e = (d + t1) | 0;
        d = c; c = b; b = a; a = (t1 + t2) | 0;
      }
      H[0] = (H[0] + a) | 0; H[1] = (H[1] + b) | 0; H[2] = (H[2] + c) | 0; H[3] = (H[3] + d) | 0;
      H[4] = (H[4] + e) | 0; H[5] = (H[5] + f) | 0; H[6] = (H[6] + g) | 0; H[7] = (H[7] + h) | 0;
    }

    function ascii(s) {
      const out = new Uint8Array(s.length);
      for (let i = 0; i < s.length; i++) out[i] = s.charCodeAt(i) & 0xff;
      return out;
    }

    function wordsOf(bytes, words, from, to) {
      for (let w = from; w < to; w++) {
        const o = w * 4;
        words[w] = (bytes[o] << 24) | (bytes[o + 1] << 16) | (bytes[o + 2] << 8) | bytes[o + 3];
      }
    }

    // SHA-256 of a byte array (or an ASCII string): 32 bytes.
    function sha256(input) {
      const msg = typeof input === 'string' ? ascii(input) : input;
      const blocks = Math.ceil((msg.length + 9) / 64);
      const buf = new Uint8Array(blocks * 64);
      buf.set(msg);
      buf[msg.length] = 0x80;
      const bits = msg.length * 8;
      const dv = new DataView(buf.buffer);
      dv.setUint32(buf.length - 8, Math.floor(bits / 4294967296));
      dv.setUint32(buf.length - 4, bits >>> 0);
      const M = new Int32Array(blocks * 16);
      wordsOf(buf, M, 0, M.length);
      const H = Int32Array.from(IV);
      for (let k = 0; k < blocks; k++) compress(H, M, k * 16);
      const out = new Uint8Array(32);
      const ov = new DataView(out.buffer);
      for (let i = 0; i < 8; i++) ov.setInt32(i * 4, H[i]);
      return out;
    }

    // Leading zero bits of a hash given as 8 big-endian words.
    function zeroBits(H) {
      let n = 0;
      for (let i = 0; i < 8; i++) {
        const w = H[i] >>> 0;
        if (w !== 0) return n + Math.clz32(w);
        n += 32;
      }
      return n;
    }

    // Finds the smallest nonce in [from, from + count) such that SHA-256(challenge "." nonce) has
    // `bits` leading zero bits; -1 when there is none. The full 64-byte blocks of the prefix are
    // hashed once; each nonce costs one (rarely two) compressions.
    function search(challenge, bits, from, count) {
      const prefix = ascii(challenge + '.');
      const full = prefix.length - (prefix.length % 64);
      const mid = Int32Array.from(IV);
      if (full) {
        const M = new Int32Array(full / 4);
        wordsOf(prefix, M, 0, M.length);
        for (let k = 0; k < full; k += 64) compress(mid, M, k / 4);
      }
      const r = prefix.length - full; // prefix bytes in the tail
      const tail = new Uint8Array(128);
      tail.set(prefix.subarray(full));
      const M = new Int32Array(32);
      const H = new Int32Array(8);
      const digits = String(from).split('').map((ch) => ch.charCodeAt(0));
      let d = 0; // digits laid out in `tail`
      let blocks = 1;
      const layout = () => {
        d = digits.length;
        const len = r + d;
        blocks = len + 9 <= 64 ? 1 : 2;
        tail.fill(0, r);
        for (let i = 0; i < d; i++) tail[r + i] = digits[i];
        tail[len] = 0x80;
        const bits = (full + len) * 8;
        const end = blocks * 64;
        tail[end - 4] = bits >>> 24; tail[end - 3] = bits >>> 16; tail[end - 2] = bits >>> 8; tail[end - 1] = bits;
        tail[end - 5] = Math.floor(bits / 4294967296);
        wordsOf(tail, M, 0, blocks * 16);
      };
      layout();
      for (let n = from, end = from + count; n < end; n++) {
        H.set(mid);
        compress(H, M, 0);
        if (blocks === 2) compress(H, M, 16);
        if ((bits >= 32 ? H[0] === 0 : (H[0] >>> (32 - bits)) === 0) && zeroBits(H) >= bits) return n;
        // Next nonce: add one to the decimal digits in place.
        let i = d - 1;
        while (i >= 0 && digits[i] === 57) digits[i--] = 48;
        if (i < 0) {
          digits.unshift(49);
          layout();
        } else {
          digits[i]++;
          for (let k = i; k < d; k++) tail[r + k] = digits[k];
          wordsOf(tail, M, (r + i) >> 2, ((r + d - 1) >> 2) + 1);
        }
      }
      return -1;
    }

    return { sha256, search, zeroBits };
  }
  // END POW KERNEL

  const pow = powKernel();
  let powWorkerUrl = null;

  function powWorker() {
    if (typeof Worker !== 'function' || typeof Blob !== 'function' || !window.URL || !URL.createObjectURL) return null;
    try {
      if (!powWorkerUrl) {
        const src = "'use strict';\nconst kernel = (" + powKernel.toString() + ")();\n" +
          'onmessage = (e) => { const m = e.data; postMessage({ job: m.job, from: m.from, count: m.count, ' +
          'nonce: kernel.search(m.challenge, m.bits, m.from, m.count) }); };\n';
        powWorkerUrl = URL.createObjectURL(new Blob([src], { type: 'text/javascript' }));
      }
      return new Worker(powWorkerUrl);
    } catch (err) {
      console.warn('placecast: no Web Worker for the proof of work, solving it on the page:', err);
      return null;
    }
  }

  async function verifyProof(challenge, nonce, bits) {
    const subtle = window.crypto && window.crypto.subtle;
    if (!subtle || typeof TextEncoder !== 'function') return null; // not a secure context
    try {
      const h = new Uint8Array(await subtle.digest('SHA-256', new TextEncoder().encode(challenge + '.' + nonce)));
      const H = new Int32Array(8);
      for (let i = 0; i < 8; i++) H[i] = (h[4 * i] << 24) | (h[4 * i + 1] << 16) | (h[4 * i + 2] << 8) | h[4 * i + 3];
      return pow.zeroBits(H) >= bits;
    } catch (_) {
      return null;
    }
  }

  // Finds the smallest decimal nonce such that SHA-256(challenge "." nonce) starts with `bits`
  // zero bits. The nonces are cut into chunks handed to a few Web Workers (made from a Blob: the
  // server serves no extra files); the answer is the first hit in the lowest chunk once every
  // lower chunk came back empty. Without workers the page itself searches, yielding between
  // chunks. The kernel is plain JavaScript: crypto.subtle.digest costs ~30x more per hash (one
  // promise per hash), so it only double-checks the answer when the page is a secure context.
  let powJobs = 0;
  function solveProof(challenge, bits, workerCount) {
    const job = ++powJobs;
    const t0 = performance.now();
    const cores = navigator.hardwareConcurrency || 2;
    const want = workerCount !== undefined ? clamp(workerCount, 0, 16) : clamp(cores - 1, 1, POW_MAX_WORKERS);
    const workers = [];
    for (let i = 0; i < want; i++) {
      const w = powWorker();
      if (!w) break;
      workers.push(w);
    }
    const finish = async (nonce, hashes) => {
      const verified = await verifyProof(challenge, nonce, bits);
      if (verified === false) console.warn('placecast: crypto.subtle disagrees with the proof of work for nonce', nonce);
      return { difficulty: bits, nonce: String(nonce), hashes, ms: Math.round(performance.now() - t0), workers: workers.length, verified };
    };
    const onPage = async () => {
      workers.length = 0;
      for (let from = 0; ; from += POW_CHUNK) {
        const n = pow.search(challenge, bits, from, POW_CHUNK);
        if (n >= 0) return finish(n, n + 1);
        await sleep(0); // let the page draw and take input
      }
    };
    if (!workers.length) return onPage();
    return new Promise((resolve) => {
      let next = 0; // next chunk to hand out
      let lowestDone = 0; // every chunk below this came back empty
      const done = new Map(); // chunk -> nonce (or -1), for chunks at or above lowestDone
      let best = -1; // lowest chunk with a hit
      let hashes = 0;
      let over = false;
      const stop = () => { over = true; for (const w of workers) w.terminate(); };
      const give = (w) => {
        // Chunks go out in order, so once there is a hit every lower chunk is already out.
        if (best >= 0) return;
        const from = next++ * POW_CHUNK;
        w.postMessage({ job, challenge, bits, from, count: POW_CHUNK });
      };
      for (const w of workers) {
        w.onmessage = (e) => {
          if (over || e.data.job !== job) return;
          const chunk = e.data.from / POW_CHUNK;
          hashes += e.data.nonce >= 0 ? e.data.nonce - e.data.from + 1 : e.data.count;
          done.set(chunk, e.data.nonce);
          if (e.data.nonce >= 0 && (best < 0 || chunk < best)) best = chunk;
          while (done.has(lowestDone) && done.get(lowestDone) < 0) done.delete(lowestDone++);
          if (best >= 0 && lowestDone === best) {
            const nonce = done.get(best);
            stop();
            resolve(finish(nonce, hashes));
            return;
          }
          give(w);
        };
        w.onerror = (e) => {
          if (over) return;
          stop();
          // A worker that cannot start (a Content-Security-Policy without blob:, say): on the page.
          console.warn('placecast: proof-of-work worker failed, solving on the page:', e.message || e);
          resolve(onPage());
        };
        give(w);
      }
    });
  }


  function authSocket() {
    const ws = S.ws;
    if (!ws || ws.readyState !== WebSocket.OPEN || !S.token || ws.authToken === S.token) return;
    ws.authToken = S.token;
    ws.send(JSON.stringify({ type: 'auth', token: S.token }));
  }

  // ---------------------------------------------------------------- placing
  async function placeAt(x, y) {
    if (S.hist.active) {
      showMessage("You're looking at the canvas as it was at version " + (S.hist.want !== null ? S.hist.want : S.hist.shown) +
        '. Press Live to place pixels.', 'info', 4000);
      return { ok: false, code: 'history_view' };
    }
    const left = S.cooldownUntil - Date.now();
    if (left > 0) {
      showMessage("You're cooling down. You can place another pixel in " + fmtDuration(left) + '.', 'warn', 4000);
      return { ok: false, code: 'cooldown', retryAfterMs: left };
    }
    if (S.placing) {
      showMessage(S.sessionState === 'verifying'
        ? "Verifying you're human before your first pixel; it goes out right after."
        : 'Your last pixel is still on its way to the server.', 'info', 3000);
      return { ok: false, code: 'busy' };
    }
    if (!S.palette.length) return { ok: false, code: 'not_ready' };
    S.placing = true;
    try {
      const color = S.color;
      if (!S.token && S.sessionState === 'verifying') {
        showMessage("Verifying you're human before your first pixel…", 'info', 10000);
      }
      let r = await placeOnce(x, y, color);
      if (!r.ok && TOKEN_ERRORS.has(r.code)) {
        // The stored session is no longer valid: start a new one and try once more.
        dropToken();
        r = await placeOnce(x, y, color);
      }
      if (r.ok) {
        hideMessage();
        setCooldown(cooldownFromNextAt(r.nextAtMs, r.cooldownMs));
      } else {
        explain(r);
      }
      return r;
    } finally {
      S.placing = false;
    }
  }

  async function placeOnce(x, y, color) {
    let token;
    try {
      token = await ensureToken();
    } catch (err) {
      if (err instanceof NetError) return { ok: false, code: 'unreachable' };
      if (err instanceof HttpError && (err.code === 'anonymous_sessions_off' || err.status === 429)) {
        return { ok: false, code: err.code, message: err.message, retryAfterMs: err.retryAfterMs, status: err.status };
      }
      return { ok: false, code: 'session_failed', message: err.message };
    }
    const ws = S.ws;
    if (ws && ws.readyState === WebSocket.OPEN) return placeViaSocket(ws, token, x, y, color);
    return placeViaHttp(token, x, y, color);
  }

  function placeViaSocket(ws, token, x, y, color) {
    return new Promise((resolve) => {
      const id = S.nextId++;
      const timer = setTimeout(() => {
        S.pending.delete(id);
        resolve({ ok: false, code: 'timeout' });
      }, PLACE_TIMEOUT_MS);
      S.pending.set(id, { ws, timer, resolve });
      try {
        if (ws.authToken !== token) {
          ws.authToken = token;
          ws.send(JSON.stringify({ type: 'auth', token }));
        }
        ws.send(JSON.stringify({ type: 'place', x, y, color, id }));
      } catch (_) {
        clearTimeout(timer);
        S.pending.delete(id);
        resolve(placeViaHttp(token, x, y, color));
      }
    });
  }

  async function placeViaHttp(token, x, y, color) {
    let res;
    try {
      res = await request(URLS.place, {
        method: 'POST',
        headers: { 'Content-Type': 'application/json', Authorization: 'Bearer ' + token },
        body: JSON.stringify({ x, y, color }),
      });
    } catch (_) {
      return { ok: false, code: 'unreachable' };
    }
    if (res.ok) {
      try {
        const b = await res.json();
        return { ok: true, version: b.version, nextAtMs: b.next_at_ms, cooldownMs: b.cooldown_ms };
      } catch (_) {
        return { ok: true, nextAtMs: Date.now() + S.cooldownMs };
      }
    }
    const err = await readError(res);
    return { ok: false, code: err.code, message: err.message, retryAfterMs: err.retryAfterMs, status: err.status };
  }

  function settlePending(id, result) {
    const p = S.pending.get(id);
    if (!p) return false;
    S.pending.delete(id);
    clearTimeout(p.timer);
    p.resolve(result);
    return true;
  }

  function failPending(ws) {
    for (const [id, p] of S.pending) {
      if (p.ws === ws) settlePending(id, { ok: false, code: 'dropped' });
    }
  }

  function explain(r) {
    const when = r.retryAfterMs ? ' in ' + fmtDuration(r.retryAfterMs) : ' in a moment';
    switch (r.code) {
      case 'cooldown':
        if (r.retryAfterMs) setCooldown(r.retryAfterMs);
        showMessage("You're cooling down. You can place another pixel" + when + '.', 'warn');
        break;
      case 'log_unavailable':
        showMessage("The server can't save pixels right now, so nothing was placed and your cooldown wasn't used. Please try again" + when + '.');
        break;
      case 'missing_token': case 'bad_token': case 'expired_token':
        showMessage("Your session isn't valid and a new one couldn't be started. Please reload the page.");
        break;
      case 'bad_coordinates':
        showMessage('That spot is outside the canvas.');
        break;
      case 'bad_color':
        showMessage("That color isn't in the palette. Please pick another one.");
        break;
      case 'unreachable':
        showMessage("Can't reach the server, so your pixel wasn't placed. Check your connection and try again.");
        break;
      case 'timeout':
        showMessage("The server didn't answer in time. Your pixel may not have been placed; check the canvas and try again.");
        break;
      case 'dropped':
        showMessage('The connection dropped before the server confirmed your pixel. If it is not on the canvas, please try again.');
        break;
      case 'anonymous_sessions_off':
        showMessage("This canvas doesn't start anonymous sessions: sign in through the site's sign-in page to place pixels.", 'warn', 10000);
        break;
      case 'session_rate_limited':
        showMessage('Too many new sessions were started from your network. Please try again' + when + '.', 'warn');
        break;
      case 'address_rate_limited':
        showMessage('Too many pixels are being placed from your network right now, so yours was not placed. Please try again' + when + '.', 'warn');
        break;
      case 'too_many_connections_from_address':
        showMessage('Too many connections from your network right now. Please try again' + when + '.', 'warn');
        break;
      case 'paused':
        showMessage('Placing is paused by the moderators right now. Please try again later.', 'warn');
        break;
      case 'ended':
        showMessage('The event has ended: the canvas is final.', 'warn', 10000);
        break;
      case 'banned':
        showMessage('Your account has been banned from placing pixels on this canvas.', 'error', 10000);
        break;
      case 'protected':
        showMessage('This area is protected by the moderators. Try a spot outside it.', 'warn');
        break;
      case 'session_failed':
        showMessage("Couldn't start a session with the server" + (r.message ? ': ' + r.message : '') + '. Please try again later.');
        break;
      default:
        if (r.status === 429) showMessage('The server is busy. Please try again' + when + '.', 'warn');
        else if (r.status === 503) showMessage("The server is busy and couldn't take your pixel. Please try again" + when + '.');
        else showMessage(r.message || 'Your pixel was not placed. Please try again.');
    }
  }

  // ---------------------------------------------------------------- syncing
  async function loadAll(gen) {
    const [infoRes, snapRes] = await Promise.all([
      request(URLS.info, { cache: 'no-store' }),
      request(URLS.snapshot, { cache: 'no-cache' }), // revalidates with ETag, 304 when unchanged
    ]);
    if (!infoRes.ok) throw await readError(infoRes);
    if (!snapRes.ok) throw await readError(snapRes);
    const info = await infoRes.json();
    const buf = await snapRes.arrayBuffer();
    if (gen !== S.gen) return;
    applyInfo(info);
    applySnapshot(buf);
    S.loads++;
    updateCooldown();
  }

  // Gets in step with the server: reloads the snapshot when `full` (or nothing is loaded yet),
  // then opens the WebSocket with since=<version> so the server sends what was missed.
  async function sync(full) {
    clearRetry();
    const gen = ++S.gen;
    closeSocket();
    if (full || !S.loaded) {
      setStatus('connecting', S.loaded ? 'Reloading the canvas…' : 'Loading the canvas…');
      try {
        await loadAll(gen);
      } catch (err) {
        if (gen !== S.gen) return;
        if (!(err instanceof NetError)) console.warn('placecast: loading the canvas failed:', err);
        const busy = err.status === 503 || err.status === 429;
        if (busy && err.retryAfterMs > 0) {
          // Busy, or too many connections from this address: come back when the server said.
          const delay = clamp(Math.round(Math.max(err.retryAfterMs, backoffBase()) * (1 + Math.random() * 0.25)), BACKOFF_MIN_MS, HINT_MAX_MS);
          S.attempt = Math.min(S.attempt + 1, 10);
          scheduleReconnect(true, 'busy', delay);
        } else {
          scheduleReconnect(true, err instanceof NetError ? 'unreachable' : busy ? 'busy' : 'error');
        }
        return;
      }
      if (gen !== S.gen) return;
    }
    openSocket(gen);
  }

  function openSocket(gen) {
    setStatus('connecting', 'Connecting…');
    let ws;
    try {
      ws = new WebSocket(wsUrl(URLS.ws + '?since=' + S.version));
    } catch (err) {
      console.warn('placecast: cannot open the WebSocket:', err);
      scheduleReconnect(false, 'error');
      return;
    }
    ws.binaryType = 'arraybuffer';
    ws.gen = gen;
    ws.opened = false;
    ws.helloAt = 0;
    ws.authToken = null;
    ws.authRetried = false;
    S.ws = ws;
    ws.onopen = () => {
      if (S.ws !== ws) return;
      ws.opened = true;
      authSocket();
      backgroundSession();
    };
    ws.onmessage = (ev) => {
      if (S.ws !== ws) return;
      if (typeof ev.data === 'string') onText(ws, ev.data);
      else onBatch(ev.data);
    };
    ws.onerror = () => { /* a close event follows */ };
    ws.onclose = (ev) => {
      if (S.ws !== ws) return;
      S.ws = null;
      onClosed(ws, ev);
    };
  }

  function closeSocket() {
    const ws = S.ws;
    if (!ws) return;
    S.ws = null;
    failPending(ws);
    try { ws.close(1000); } catch (_) { /* already closed */ }
  }

  function onBatch(buf) {
    const r = applyBatch(buf);
    if (r === 'ok' && !el.historyPanel.hidden) historyFollowLive();
    if (r === 'gap' || r === 'bad') {
      // Missed edits (or a frame we cannot read): reload the snapshot and catch up from it.
      const now = Date.now();
      const again = now - S.lastGapAt < 10000;
      S.lastGapAt = now;
      if (again) { closeSocket(); S.gen++; scheduleReconnect(true, 'reconnecting'); } else sync(true);
    }
  }

  function onText(ws, data) {
    let msg;
    try { msg = JSON.parse(data); } catch (_) { return; }
    if (!msg || typeof msg !== 'object') return;
    switch (msg.type) {
      case 'hello':
        ws.helloAt = Date.now();
        S.failedOpens = 0;
        if (typeof msg.cooldown_ms === 'number') S.cooldownMs = msg.cooldown_ms;
        if (typeof msg.version === 'number' && msg.version < S.version) {
          // The server is behind what we have (its log was reset): start again from its snapshot.
          sync(true);
          return;
        }
        setStatus('live', 'Live');
        backgroundSession();
        break;
      case 'placed':
        settlePending(msg.id, { ok: true, version: msg.version, nextAtMs: msg.next_at_ms });
        break;
      case 'error': {
        const r = { ok: false, code: msg.code, message: msg.message, retryAfterMs: msg.retry_after_ms };
        if (msg.id !== undefined && msg.id !== null && settlePending(msg.id, r)) break;
        if (TOKEN_ERRORS.has(msg.code) && ws.authToken) {
          // The `auth` message was refused: get a new session once for this connection.
          const bad = ws.authToken;
          if (S.token === bad) dropToken();
          if (!ws.authRetried) {
            ws.authRetried = true;
            ensureToken().catch(() => {});
          }
        } else if (msg.code !== 'cooldown') {
          console.warn('placecast: server error:', msg.code, msg.message);
        }
        break;
      }
      case 'authed':
        if (msg.user) S.user = msg.user;
        break;
      case 'reload':
        ws.reloadRequested = true;
        break;
      case 'reconnect': {
        // The server is draining (a restart or a scale-down): it closes this connection (1012)
        // soon and asks to be reconnected after after_ms plus a random part of jitter_ms.
        const a = Number(msg.after_ms);
        const j = Number(msg.jitter_ms);
        ws.hint = {
          afterMs: Number.isFinite(a) && a > 0 ? Math.min(a, HINT_MAX_MS) : 0,
          jitterMs: Number.isFinite(j) && j > 0 ? Math.min(j, HINT_MAX_MS) : 0,
        };
        break;
      }
      default:
        break;
    }
  }

  function onClosed(ws, ev) {
    S.lastCloseCode = ev.code;
    const entry = { code: ev.code, reason: ev.reason || '', at: Date.now(), hint: ws.hint || null, delayMs: null };
    S.closes.push(entry);
    if (S.closes.length > 20) S.closes.shift();
    failPending(ws);
    if (ws.helloAt && Date.now() - ws.helloAt > LIVED_MS) S.attempt = 0;
    const gen = S.gen;
    if (ev.code === 4001 || ws.reloadRequested) {
      scheduleReconnect(true, 'reconnecting');
    } else if (ev.code === 1012 || ev.code === 1001) {
      // Service restart (a drain) or going away: not a failure. Wait as the server asked (or
      // 0..1 s), then catch up with since=<version>, without reloading the snapshot; the balancer
      // sends us to another node. Failures after that back off from the start.
      const h = ws.hint || GOING_AWAY_HINT;
      S.attempt = 0;
      entry.delayMs = Math.round(h.afterMs + Math.random() * h.jitterMs);
      scheduleReconnect(false, 'restarting', entry.delayMs);
    } else if (ev.code === 1013) {
      // Try again later: the server cannot serve this catch-up now. Wait at least its hint (or a
      // few seconds), and at least the usual backoff, with jitter on top.
      const hinted = hintFromReason(ev.reason);
      const base = Math.max(hinted !== null ? hinted : TRY_LATER_MIN_MS, backoffBase());
      S.attempt = Math.min(S.attempt + 1, 10);
      entry.delayMs = Math.round(Math.min(base, HINT_MAX_MS) * (1 + Math.random() * 0.5));
      scheduleReconnect(false, 'busy', entry.delayMs);
    } else if (ev.code === 4002) {
      // The server pinged and heard nothing back (a stalled network): reconnect as usual.
      scheduleReconnect(false, 'reconnecting');
    } else if (ev.code === 4000) {
      scheduleReconnect(false, 'reconnecting');
    } else if (ev.code === 1008) {
      // Our `since` is ahead of the server (or we misbehaved): start from its snapshot.
      scheduleReconnect(true, 'reconnecting');
    } else if (!ws.opened) {
      // The upgrade failed: tell "server unreachable" apart from a refused WebSocket.
      setStatus('connecting', 'Connecting…');
      probeHealth().then((h) => {
        if (gen !== S.gen || S.ws) return;
        let full = false;
        if (h) {
          S.failedOpens++;
          if (h.version < S.version || S.failedOpens >= 3) full = true;
        }
        scheduleReconnect(full, h ? 'reconnecting' : 'unreachable');
      });
    } else {
      scheduleReconnect(false, 'reconnecting');
    }
  }

  async function probeHealth() {
    try {
      const res = await request(URLS.health, { cache: 'no-store' }, 5000);
      if (!res.ok) return null;
      const b = await res.json();
      return { version: typeof b.version === 'number' ? b.version : 0 };
    } catch (_) {
      return null;
    }
  }

  // A wait in a close reason such as "busy; retry after 2500 ms", "retry_after_ms=2500" or
  // "try again in 3 s": milliseconds, or null.
  function hintFromReason(reason) {
    const r = String(reason || '');
    let m = /retry[_-]?after[_-]?ms\D{0,3}(\d+)/i.exec(r);
    if (m) return Number(m[1]);
    m = /(\d+(?:\.\d+)?)\s*(ms|milliseconds?|s|secs?|seconds?)\b/i.exec(r);
    if (!m) return null;
    const n = Number(m[1]);
    return Math.round(/^m/i.test(m[2]) ? n : n * 1000);
  }

  function backoffBase() {
    return Math.min(BACKOFF_MAX_MS, BACKOFF_MIN_MS * Math.pow(2, S.attempt));
  }

  function clearRetry() {
    clearTimeout(S.retryTimer);
    clearTimeout(S.statusTimer);
    S.retryTimer = 0;
    S.statusTimer = 0;
    S.retryFull = false;
  }

  // Reconnects after `delayMs` when given (a server's hint), else after the exponential backoff.
  function scheduleReconnect(full, reason, delayMs) {
    if (S.paused) return;
    clearTimeout(S.retryTimer);
    let delay = delayMs;
    if (delay === undefined) {
      // Exponential backoff from 1 s up to 30 s, with +/-25 % jitter so clients spread out.
      delay = clamp(Math.round(backoffBase() * (0.75 + Math.random() * 0.5)), BACKOFF_MIN_MS, BACKOFF_MAX_MS);
      S.attempt = Math.min(S.attempt + 1, 10);
    }
    S.retryFull = S.retryFull || full;
    S.retryReason = reason;
    S.retryAt = Date.now() + delay;
    S.retryTimer = setTimeout(() => sync(S.retryFull), delay);
    retryStatus();
  }

  function retryStatus() {
    clearTimeout(S.statusTimer);
    S.statusTimer = 0;
    if (!S.retryTimer) return;
    const left = Math.max(0, S.retryAt - Date.now());
    const secs = Math.max(1, Math.ceil(left / 1000));
    if (S.retryReason === 'unreachable') {
      setStatus('unreachable', navigator.onLine === false
        ? "You're offline, retrying in " + secs + ' s…'
        : 'Server unreachable, retrying in ' + secs + ' s…');
    } else if (S.retryReason === 'busy') {
      setStatus('connecting', 'Server busy, retrying in ' + secs + ' s…');
    } else if (S.retryReason === 'error') {
      setStatus('error', 'Server problem, retrying in ' + secs + ' s…');
    } else {
      setStatus('connecting', 'Reconnecting in ' + secs + ' s…');
    }
    if (left > 1000) S.statusTimer = setTimeout(retryStatus, ((left - 1) % 1000) + 1);
  }

  function retryNow() {
    if (!S.retryTimer) return;
    S.attempt = 0;
    sync(S.retryFull);
  }

  // ---------------------------------------------------------------- visibility
  function pause(text) {
    S.paused = true;
    clearRetry();
    S.gen++;
    closeSocket();
    setStatus('paused', text);
  }

  function resume() {
    S.paused = false;
    S.userPaused = false;
    S.attempt = 0;
    sync(false);
  }

  function onVisibility() {
    if (document.hidden) {
      clearTimeout(S.hiddenTimer);
      S.hiddenTimer = setTimeout(() => {
        // Hidden for long: let go of the connection; catch up with `since` when shown again.
        if (document.hidden) pause('Paused while this tab is hidden');
      }, HIDDEN_DISCONNECT_MS);
    } else {
      clearTimeout(S.hiddenTimer);
      if (S.paused && !S.userPaused) resume();
      if (S.needsDraw) requestDraw();
      updateCooldown();
      if (S.retryTimer) retryStatus();
    }
  }

  // ---------------------------------------------------------------- times
  function fmtAgo(ms) {
    const s = Math.floor(Math.max(0, ms) / 1000);
    if (s < 10) return 'just now';
    if (s < 60) return s + ' s ago';
    const m = Math.floor(s / 60);
    if (m < 60) return m + ' min ago';
    const h = Math.floor(m / 60);
    if (h < 48) return h + ' h ago';
    return plural(Math.floor(h / 24), 'day') + ' ago';
  }

  // <time> showing "3 min ago", the local date and time on hover; refreshed while shown.
  function timeElement(tsMs) {
    const t = document.createElement('time');
    const d = new Date(tsMs);
    t.dateTime = d.toISOString();
    t.title = d.toLocaleString();
    t.dataset.ts = String(tsMs);
    t.textContent = fmtAgo(Date.now() - tsMs);
    if (!S.timeTimer) S.timeTimer = setTimeout(tickTimes, TIME_TICK_MS);
    return t;
  }

  function tickTimes() {
    S.timeTimer = 0;
    let any = false;
    for (const t of document.querySelectorAll('time[data-ts]')) {
      const text = fmtAgo(Date.now() - Number(t.dataset.ts));
      if (t.textContent !== text) t.textContent = text;
      any = true;
    }
    if (any) S.timeTimer = setTimeout(tickTimes, TIME_TICK_MS);
  }

  function validTs(v) { return typeof v === 'number' && Number.isFinite(v) && v > 0; }

  function swatchElement(color) {
    const sw = document.createElement('span');
    sw.className = 'pixel-swatch';
    const hex = S.palette[color];
    sw.style.background = hex || 'transparent';
    sw.title = hex || 'color ' + color;
    return sw;
  }

  // ---------------------------------------------------------------- the address (#x=&y=&zoom=)
  // The fragment carries the view (center pixel and zoom) and, optionally, a template. It is
  // rewritten with history.replaceState as the view moves; other parts of it are kept.
  function hashParams() {
    const out = new Map();
    for (const part of location.hash.replace(/^#/, '').split('&')) {
      if (!part) continue;
      const eq = part.indexOf('=');
      const key = eq < 0 ? part : part.slice(0, eq);
      let v = eq < 0 ? '' : part.slice(eq + 1);
      try { v = decodeURIComponent(v); } catch (_) { continue; }
      out.set(key, v);
    }
    return out;
  }

  function intParam(v) {
    if (typeof v !== 'string' || !/^-?\d{1,9}$/.test(v.trim())) return null;
    return Number(v);
  }

  function numParam(v) {
    if (typeof v !== 'string' || !/^-?(\d+\.?\d*|\.\d+)(e-?\d+)?$/i.test(v.trim())) return null;
    const n = Number(v);
    return Number.isFinite(n) ? n : null;
  }

  function viewFromHash() {
    const p = hashParams();
    if (!p.has('x') && !p.has('y') && !p.has('zoom')) return;
    S.hashView = { x: intParam(p.get('x')), y: intParam(p.get('y')), zoom: numParam(p.get('zoom')) };
    if (S.width && S.cssW) {
      applyHashView();
      clampView();
      requestDraw();
    }
  }

  // Applies the view from the address; values that are not numbers, or pixels off the canvas,
  // are ignored (the zoom is brought into the allowed range).
  function applyHashView() {
    const v = S.hashView;
    S.hashView = null;
    if (!v || !S.width || !S.cssW) return;
    const scale = v.zoom !== null && v.zoom > 0 ? clamp(v.zoom, minScale(), MAX_SCALE) : S.scale;
    const onCanvas = v.x !== null && v.y !== null && v.x >= 0 && v.y >= 0 && v.x < S.width && v.y < S.height;
    if (onCanvas) {
      S.scale = scale;
      S.ox = S.cssW / 2 - (v.x + 0.5) * scale;
      S.oy = S.cssH / 2 - (v.y + 0.5) * scale;
    } else if (scale !== S.scale) {
      const ix = (S.cssW / 2 - S.ox) / S.scale;
      const iy = (S.cssH / 2 - S.oy) / S.scale;
      S.scale = scale;
      S.ox = S.cssW / 2 - ix * scale;
      S.oy = S.cssH / 2 - iy * scale;
    }
    S.fitted = true;
  }

  function scheduleHash() {
    if (!S.loaded || S.hashTimer) return;
    S.hashTimer = setTimeout(() => { S.hashTimer = 0; writeHash(); }, HASH_THROTTLE_MS);
  }

  function writeHash() {
    // Changed by someone else (a pasted link): its hashchange comes next and must win.
    if (!S.width || location.hash !== S.lastHash) return;
    const c = viewCenter();
    const parts = ['x=' + c.x, 'y=' + c.y, 'zoom=' + c.zoom];
    const T = S.tpl;
    if (T.inHash && T.url) {
      parts.push('template=' + encodeURIComponent(T.url), 'tx=' + T.x, 'ty=' + T.y, 'to=' + T.opacity);
    }
    const rest = location.hash.replace(/^#/, '').split('&')
      .filter((p) => p && !/^(x|y|zoom|template|tx|ty|to)(=|$)/.test(p));
    const hash = '#' + parts.concat(rest).join('&');
    if (hash === location.hash) return;
    try {
      history.replaceState(history.state, '', location.pathname + location.search + hash);
    } catch (_) { /* sandboxed, or too many calls: the next move tries again */ }
    S.lastHash = location.hash;
  }

  // ---------------------------------------------------------------- panels and tools
  function setExpanded(button, panel, open) {
    panel.hidden = !open;
    button.setAttribute('aria-expanded', String(open));
  }

  function toggleSidePanel(which) {
    const pairs = [[el.toolTemplate, el.templatePanel], [el.toolHelp, el.helpPanel]];
    for (const [b, p] of pairs) setExpanded(b, p, p === which ? p.hidden : false);
    if (which === el.templatePanel && !which.hidden) syncTemplateForm();
  }

  function closePanel(panel) {
    if (panel === el.pixelPanel) {
      el.pixelPanel.hidden = true;
      S.inspect.seq++;
      S.inspect.sel = null;
      requestDraw();
    } else if (panel === el.historyPanel) {
      closeHistory();
    } else if (panel === el.templatePanel || panel === el.helpPanel) {
      toggleSidePanel(null);
    }
  }

  function closePanels() {
    closePanel(el.pixelPanel);
    toggleSidePanel(null);
    setInspectMode(false);
  }

  function setInspectMode(on) {
    S.inspect.mode = !!on;
    el.toolInspect.setAttribute('aria-pressed', String(S.inspect.mode));
    document.body.classList.toggle('inspecting', S.inspect.mode);
    updateCooldown();
  }

  function bootTools() {
    el.toolInspect.addEventListener('click', () => setInspectMode(!S.inspect.mode));
    el.toolHistory.addEventListener('click', () => (el.historyPanel.hidden ? openHistory() : closeHistory()));
    el.toolTemplate.addEventListener('click', () => toggleSidePanel(el.templatePanel));
    el.toolHelp.addEventListener('click', () => toggleSidePanel(el.helpPanel));
    for (const b of document.querySelectorAll('[data-close]')) {
      b.addEventListener('click', () => closePanel($(b.dataset.close)));
    }
    el.pixelHistoryToggle.addEventListener('click', togglePixelHistory);
    el.historyRange.addEventListener('input', onHistoryInput);
    el.historyLive.addEventListener('click', goLive);
    el.templateForm.addEventListener('submit', (e) => { e.preventDefault(); templateFromForm(); });
    for (const input of [el.templateUrl, el.templateX, el.templateY]) input.addEventListener('change', templateFromForm);
    el.templateOpacity.addEventListener('input', () => setTemplate({ opacity: Number(el.templateOpacity.value) }));
    el.templateShow.addEventListener('change', () => setTemplate({ show: el.templateShow.checked }));
    el.templateClear.addEventListener('click', () => {
      S.tpl.inHash = false;
      setTemplate({ url: '' });
      writeHash();
    });
    bootNotify();
    syncTemplateForm();
  }

  // ---------------------------------------------------------------- pixel info
  async function inspectAt(x, y) {
    const P = S.inspect;
    P.sel = { x, y };
    const seq = ++P.seq;
    P.data = null;
    el.pixelPanel.hidden = false;
    el.pixelTitle.textContent = 'Pixel ' + x + ', ' + y;
    renderPixelPanel();
    requestDraw();
    const r = await fetchPixel(x, y, P.historyOpen ? PIXEL_HISTORY : 0);
    if (seq !== P.seq) return;
    P.data = r;
    renderPixelPanel();
  }

  async function fetchPixel(x, y, n) {
    let res;
    try {
      res = await request(URLS.pixel + '?x=' + x + '&y=' + y + (n ? '&history=' + n : ''), { cache: 'no-store' });
    } catch (_) {
      return { x, y, error: "Can't reach the server to look this pixel up." };
    }
    if (!res.ok) {
      const err = await readError(res);
      // No lookups here at all (turned off, or a server without the route): no history either.
      const none = err.code === 'pixel_lookup_off' || err.status === 404 || err.status === 405;
      return { x, y, code: err.code, error: pixelErrorText(err), none };
    }
    try {
      const b = await res.json();
      const entry = (e) => (e && typeof e === 'object' && typeof e.version === 'number' ? e : null);
      const history = Array.isArray(b.history) ? b.history.map(entry).filter(Boolean) : null;
      if (history) history.sort((a, c) => c.version - a.version); // newest first
      return { x, y, last: entry(b.last), history };
    } catch (_) {
      return { x, y, error: 'The server sent an answer this page cannot read.' };
    }
  }

  function pixelErrorText(err) {
    switch (err.code) {
      case 'pixel_lookup_off': return 'Lookups are off on this server.';
      case 'bad_coordinates': return 'That spot is outside the canvas.';
      default:
        if (err.status === 404 || err.status === 405) return "This server doesn't look pixels up.";
        if (err.status === 429 || err.status === 503) return 'The server is busy. Please try again in a moment.';
        return err.message || "Couldn't look this pixel up (" + err.code + ').';
    }
  }

  function userElement(user) {
    const u = document.createElement('span');
    u.className = 'pixel-user';
    if (typeof user === 'string' && user) {
      u.textContent = user;
      u.title = user;
    } else {
      u.textContent = 'anonymous';
      u.classList.add('muted');
    }
    return u;
  }

  function renderPixelPanel() {
    const P = S.inspect;
    const sel = P.sel;
    if (!sel) return;
    const d = P.data;
    const body = el.pixelBody;
    body.textContent = '';
    const row = (...kids) => {
      const r = document.createElement('div');
      r.className = 'row';
      for (const k of kids) r.append(k);
      body.appendChild(r);
      return r;
    };
    const last = d && d.last;
    const color = last ? last.color : Math.max(0, (S.indices && S.indices[sel.y * S.width + sel.x]) || 0);
    const hex = document.createElement('span');
    hex.className = 'pixel-color';
    hex.textContent = S.palette[color] || 'color ' + color;
    row(swatchElement(color), hex);
    if (!d) {
      row('Looking it up…');
    } else if (!d.error) {
      if (last) {
        const by = row('Placed by ', userElement(last.user));
        by.classList.add('pixel-by');
        const when = row();
        when.classList.add('pixel-when');
        if (validTs(last.ts_ms)) when.append(timeElement(last.ts_ms), ' · ');
        const v = document.createElement('span');
        v.className = 'pixel-version';
        v.textContent = 'version ' + last.version;
        when.append(v);
      } else {
        row('Nobody has placed this pixel yet.').classList.add('muted');
      }
    }
    let note = d && d.error ? d.error : '';
    if (!note && S.hist.active && d) note = 'This is the pixel as it is now; the canvas shows version ' + (S.hist.shown !== null ? S.hist.shown : S.hist.want) + '.';
    el.pixelNote.textContent = note;
    el.pixelNote.dataset.kind = d && d.error ? 'error' : '';
    el.pixelHistoryToggle.hidden = !!(d && d.none);
    el.pixelHistoryToggle.setAttribute('aria-expanded', String(P.historyOpen));
    el.pixelHistoryToggle.textContent = P.historyOpen ? 'Hide the edits' : 'Show the last ' + PIXEL_HISTORY + ' edits';
    renderPixelHistory();
  }

  function renderPixelHistory() {
    const P = S.inspect;
    const list = el.pixelHistory;
    list.hidden = !P.historyOpen || el.pixelHistoryToggle.hidden;
    list.textContent = '';
    if (list.hidden) return;
    const d = P.data;
    const item = (...kids) => {
      const li = document.createElement('li');
      for (const k of kids) li.append(k);
      list.appendChild(li);
      return li;
    };
    if (!d || (!d.error && !d.history)) {
      item('Loading…').classList.add('muted');
    } else if (d.error) {
      // said in the note
    } else if (!d.history.length) {
      item('No edits yet.').classList.add('muted');
    } else {
      for (const e of d.history.slice(0, PIXEL_HISTORY)) {
        const li = item(swatchElement(e.color), userElement(e.user));
        li.dataset.version = String(e.version);
        if (validTs(e.ts_ms)) li.append(timeElement(e.ts_ms));
        const v = document.createElement('span');
        v.className = 'muted';
        v.textContent = 'v' + e.version;
        li.append(v);
      }
    }
  }

  async function togglePixelHistory() {
    const P = S.inspect;
    P.historyOpen = !P.historyOpen;
    renderPixelPanel();
    if (!P.historyOpen || !P.sel || (P.data && P.data.history)) return;
    const { x, y } = P.sel;
    const seq = ++P.seq;
    const r = await fetchPixel(x, y, PIXEL_HISTORY);
    if (seq !== P.seq) return;
    P.data = r;
    renderPixelPanel();
  }

  // ---------------------------------------------------------------- history view
  function allocHist(w, h) {
    const H = S.hist;
    H.width = w;
    H.height = h;
    H.indices = new Uint8Array(w * h);
    H.image = new ImageData(w, h);
    H.img32 = new Uint32Array(H.image.data.buffer);
    H.off = document.createElement('canvas');
    H.off.width = w;
    H.off.height = h;
    H.offCtx = H.off.getContext('2d');
  }

  function openHistory() {
    setExpanded(el.toolHistory, el.historyPanel, true);
    const H = S.hist;
    if (!H.max) H.max = S.version;
    showHistoryLabel();
    refreshHistoryInfo();
  }

  function closeHistory() {
    goLive();
    setExpanded(el.toolHistory, el.historyPanel, false);
  }

  async function refreshHistoryInfo() {
    const H = S.hist;
    const seq = ++H.infoSeq;
    let info = null;
    let error = '';
    try {
      const res = await request(URLS.historyInfo, { cache: 'no-store' });
      if (res.ok) info = await res.json();
      else {
        const err = await readError(res);
        error = err.status === 404 || err.status === 405 ? "This server doesn't keep the canvas's history."
          : err.message || "The history isn't available (" + err.code + ').';
      }
    } catch (_) {
      error = "Can't reach the server to load the history.";
    }
    if (seq !== H.infoSeq) return;
    H.infoError = error;
    if (info) {
      const first = Number(info.first_version);
      const last = Number(info.version);
      H.min = Number.isFinite(first) && first >= 0 ? first : 0;
      H.max = Math.max(H.min, Number.isFinite(last) ? last : 0);
      H.firstTs = validTs(info.first_ts_ms) ? info.first_ts_ms : null;
      H.lastTs = validTs(info.last_ts_ms) ? info.last_ts_ms : null;
      el.historyRange.min = String(H.min);
      el.historyRange.max = String(H.max);
      if (H.active && H.want !== null) el.historyRange.value = String(clamp(H.want, H.min, H.max));
      else el.historyRange.value = String(H.max);
    }
    el.historyRange.disabled = !info;
    showHistoryLabel();
  }

  // A live batch while the panel is open: the slider reaches the new version (and stays at the
  // end when showing the live canvas).
  function historyFollowLive() {
    const H = S.hist;
    if (S.version <= H.max || el.historyRange.disabled) return;
    H.max = S.version;
    el.historyRange.max = String(H.max);
    if (!H.active) {
      el.historyRange.value = String(H.max);
      showHistoryLabel();
    }
  }

  function onHistoryInput() {
    const H = S.hist;
    const v = clamp(Math.round(Number(el.historyRange.value)), H.min, H.max);
    H.want = v;
    H.error = '';
    if (!H.active) {
      H.active = true;
      document.body.classList.add('history-view');
      el.historyLive.disabled = false;
      requestDraw();
    }
    updateCooldown();
    showHistoryLabel();
    clearTimeout(H.timer);
    H.timer = setTimeout(() => { H.timer = 0; loadHistoryVersion(); }, HISTORY_DEBOUNCE_MS);
  }

  // Loads the version the slider asks for; one request at a time, the newest wish next.
  async function loadHistoryVersion() {
    const H = S.hist;
    if (H.inflight || !H.active || H.want === null || H.want === H.shown) return;
    const v = H.want;
    const seq = H.seq;
    H.inflight = true;
    showHistoryLabel();
    try {
      let retried = false;
      for (;;) {
        let res;
        try {
          res = await request(URLS.snapshot + '?at=' + v, {});
        } catch (_) {
          if (seq === H.seq) H.error = "Can't reach the server to load version " + v + '.';
          return;
        }
        if (seq !== H.seq) return;
        if (res.ok) {
          const buf = await res.arrayBuffer();
          if (seq !== H.seq) return;
          H.shown = decodeSnapshot(buf, H, allocHist);
          const t = Number(res.headers.get('X-Canvas-Time-Ms'));
          H.timeMs = validTs(t) ? t : null;
          H.error = '';
          H.offCtx.putImageData(H.image, 0, 0);
          requestDraw();
          if (!el.pixelPanel.hidden) renderPixelPanel();
          return;
        }
        const err = await readError(res);
        if (seq !== H.seq) return;
        if (err.code === 'history_busy' && !retried) {
          // Too many past canvases being built: once more, after the server's hint.
          retried = true;
          await sleep(clamp(err.retryAfterMs > 0 ? err.retryAfterMs : 1000, 100, 10000));
          if (seq !== H.seq) return;
          continue;
        }
        if (err.code === 'version_not_yet') {
          H.error = "Version " + v + " isn't on this server yet.";
          refreshHistoryInfo();
        } else if (err.code === 'history_unavailable') {
          H.error = 'This server no longer has the canvas at version ' + v + '.';
          refreshHistoryInfo();
        } else if (err.code === 'history_busy') {
          H.error = 'The server is busy building past canvases. Please try again in a moment.';
        } else if (err.status === 404 || err.status === 400) {
          H.error = "This server can't show version " + v + (err.message ? ': ' + err.message : '.');
        } else {
          H.error = err.message || "Couldn't load version " + v + ' (' + err.code + ').';
        }
        return;
      }
    } catch (err) {
      if (seq === H.seq) H.error = "Couldn't read version " + v + ': ' + (err && err.message || err);
    } finally {
      H.inflight = false;
      showHistoryLabel();
      if (H.active && H.want !== null && H.want !== H.shown && !H.timer && (seq !== H.seq || H.want !== v)) loadHistoryVersion();
    }
  }

  function goLive() {
    const H = S.hist;
    H.seq++;
    clearTimeout(H.timer);
    H.timer = 0;
    const was = H.active;
    H.active = false;
    H.want = null;
    H.shown = null;
    H.timeMs = null;
    H.error = '';
    document.body.classList.remove('history-view');
    el.historyLive.disabled = true;
    if (S.version > H.max && !el.historyRange.disabled) {
      H.max = S.version;
      el.historyRange.max = String(H.max);
    }
    el.historyRange.value = String(H.max);
    showHistoryLabel();
    if (was) {
      updateCooldown();
      requestDraw();
      if (!el.pixelPanel.hidden) renderPixelPanel();
    }
  }

  function showHistoryLabel() {
    const H = S.hist;
    const label = el.historyLabel;
    label.textContent = '';
    label.dataset.kind = '';
    if (H.error || (H.infoError && !H.active)) {
      label.textContent = H.error || H.infoError;
      label.dataset.kind = 'error';
      return;
    }
    if (!H.active) {
      label.append('Live: version ' + S.version);
      if (H.firstTs) label.append(' · history from ', timeElement(H.firstTs));
      if (!el.historyRange.disabled && H.max > H.min) label.append(' · drag the slider to go back');
      return;
    }
    const v = H.want !== null ? H.want : H.shown;
    label.append('Version ' + v + ' of ' + H.max);
    if (H.shown !== v || H.inflight) {
      label.append(' · loading…');
    } else if (H.timeMs) {
      label.append(' · ' + new Date(H.timeMs).toLocaleString() + ' (', timeElement(H.timeMs), ')');
    }
  }

  // ---------------------------------------------------------------- template overlay
  function loadTemplateSettings() {
    const raw = storageGet(TEMPLATE_KEY);
    if (!raw) return;
    try {
      const t = JSON.parse(raw);
      if (t && typeof t === 'object') setTemplate(t, { store: false });
    } catch (_) { /* ignore */ }
  }

  // The template from the address (#template=<url-encoded>&tx=&ty=&to=): taken and stored;
  // values that are not numbers are ignored.
  function templateFromHash() {
    const p = hashParams();
    if (!p.has('template')) return;
    const t = { url: p.get('template'), show: true };
    const tx = intParam(p.get('tx'));
    const ty = intParam(p.get('ty'));
    const to = numParam(p.get('to'));
    if (tx !== null) t.x = tx;
    if (ty !== null) t.y = ty;
    if (to !== null && to >= 0 && to <= 1) t.opacity = to;
    S.tpl.inHash = true;
    setTemplate(t);
  }

  function templateFromForm() {
    const t = { url: el.templateUrl.value.trim() };
    const x = intParam(el.templateX.value);
    const y = intParam(el.templateY.value);
    if (x !== null) t.x = x;
    if (y !== null) t.y = y;
    setTemplate(t);
  }

  function setTemplate(t, { store = true } = {}) {
    const T = S.tpl;
    const before = T.url;
    if (typeof t.url === 'string') T.url = t.url.trim();
    if (Number.isInteger(t.x)) T.x = clamp(t.x, -1e6, 1e6);
    if (Number.isInteger(t.y)) T.y = clamp(t.y, -1e6, 1e6);
    if (typeof t.opacity === 'number' && Number.isFinite(t.opacity)) T.opacity = clamp(Math.round(t.opacity * 100) / 100, 0, 1);
    if (typeof t.show === 'boolean') T.show = t.show;
    if (store) {
      if (T.url) storageSet(TEMPLATE_KEY, JSON.stringify({ url: T.url, x: T.x, y: T.y, opacity: T.opacity, show: T.show }));
      else storageDel(TEMPLATE_KEY);
      if (T.inHash) scheduleHash(); // a template link keeps showing the current settings
    }
    if (T.url !== before || (typeof t.url === 'string' && T.state === 'error')) loadTemplateImage();
    syncTemplateForm();
    positionTemplate();
  }

  function loadTemplateImage() {
    const T = S.tpl;
    const seq = ++T.seq;
    T.error = '';
    T.width = 0;
    T.height = 0;
    if (!T.url) {
      T.state = 'none';
      el.tplImg.removeAttribute('src');
      positionTemplate();
      syncTemplateForm();
      return;
    }
    let url;
    try { url = new URL(T.url, location.href); } catch (_) { url = null; }
    if (!url || !/^(https?|data|blob):$/.test(url.protocol)) {
      templateFailed('That is not an image address (it must start with https://, http:// or data:).');
      return;
    }
    T.state = 'loading';
    syncTemplateForm();
    // A new element per address: a late answer for an earlier one cannot replace it. An <img>
    // needs no CORS; nothing reads its pixels.
    const img = new Image();
    img.decoding = 'async';
    img.onload = () => {
      if (seq !== T.seq) return;
      if (!img.naturalWidth || !img.naturalHeight) {
        templateFailed("The template image at that address is empty.");
        return;
      }
      T.state = 'ok';
      T.width = img.naturalWidth;
      T.height = img.naturalHeight;
      img.id = 'template-img';
      img.className = 'template-img';
      img.alt = '';
      img.hidden = true;
      el.tplImg.replaceWith(img);
      el.tplImg = img;
      syncTemplateForm();
      positionTemplate();
    };
    img.onerror = () => {
      if (seq !== T.seq) return;
      templateFailed("The template image couldn't be loaded. Check the address: it must point straight to an image (PNG, GIF, WebP…) that is online.");
    };
    img.src = url.href;
  }

  function templateFailed(text) {
    const T = S.tpl;
    T.state = 'error';
    T.error = text;
    positionTemplate();
    syncTemplateForm();
    // The open panel says it already; a template from the address or from storage needs a word.
    if (el.templatePanel.hidden) showMessage(text, 'warn');
  }

  function syncTemplateForm() {
    const T = S.tpl;
    if (document.activeElement !== el.templateUrl) el.templateUrl.value = T.url;
    if (document.activeElement !== el.templateX) el.templateX.value = String(T.x);
    if (document.activeElement !== el.templateY) el.templateY.value = String(T.y);
    el.templateOpacity.value = String(T.opacity);
    el.templateOpacityOut.value = T.opacity.toFixed(2);
    el.templateShow.checked = T.show;
    el.templateClear.disabled = !T.url;
    const st = el.templateStatus;
    st.dataset.kind = T.state === 'error' ? 'error' : '';
    st.textContent = T.state === 'error' ? T.error
      : T.state === 'loading' ? 'Loading the image…'
        : T.state === 'ok' ? T.width + ' × ' + T.height + ' image at x ' + T.x + ', y ' + T.y + (T.show ? '' : ' (hidden)')
          : 'No template.';
  }

  // Places the overlay over the canvas: its top-left pixel on canvas pixel (x, y), one image
  // pixel per canvas pixel. Called on every frame (pan, zoom) and when the settings change.
  function positionTemplate() {
    const T = S.tpl;
    const img = el.tplImg;
    const on = T.show && T.state === 'ok' && S.width > 0 && S.cssW > 0;
    if (!on) {
      if (!img.hidden) img.hidden = true;
      return;
    }
    const s = S.scale;
    const st = img.style;
    const left = (S.ox + T.x * s) + 'px';
    const top = (S.oy + T.y * s) + 'px';
    const w = (T.width * s) + 'px';
    const h = (T.height * s) + 'px';
    if (st.left !== left) st.left = left;
    if (st.top !== top) st.top = top;
    if (st.width !== w) st.width = w;
    if (st.height !== h) st.height = h;
    const o = String(T.opacity);
    if (st.opacity !== o) st.opacity = o;
    if (img.hidden) img.hidden = false;
  }

  // ---------------------------------------------------------------- cooldown notification
  function bootNotify() {
    const box = el.notify;
    if (typeof Notification !== 'function') {
      box.disabled = true;
      box.parentElement.title = "This browser can't show notifications";
      return;
    }
    S.notifyOn = storageGet(NOTIFY_KEY) === '1' && Notification.permission === 'granted';
    box.checked = S.notifyOn;
    box.addEventListener('change', onNotifyToggle);
  }

  async function onNotifyToggle() {
    const box = el.notify;
    if (!box.checked) {
      S.notifyOn = false;
      storageSet(NOTIFY_KEY, '0');
      scheduleNotify();
      return;
    }
    let perm = Notification.permission;
    if (perm !== 'granted') {
      perm = await new Promise((resolve) => {
        try {
          const r = Notification.requestPermission(resolve); // old Safari: a callback
          if (r && typeof r.then === 'function') r.then(resolve, () => resolve('denied'));
        } catch (_) {
          resolve('denied');
        }
      });
    }
    if (!box.checked) return; // unticked while the browser asked
    if (perm === 'granted') {
      S.notifyOn = true;
      storageSet(NOTIFY_KEY, '1');
      scheduleNotify();
    } else {
      box.checked = false;
      S.notifyOn = false;
      storageSet(NOTIFY_KEY, '0');
      showMessage(perm === 'denied'
        ? "Notifications are blocked for this site. Allow them in your browser's site settings to be told when you can place again."
        : 'Notifications were not allowed.', 'warn');
    }
  }

  function scheduleNotify() {
    clearTimeout(S.notifyTimer);
    S.notifyTimer = 0;
    if (!S.notifyOn) return;
    const left = S.cooldownUntil - Date.now();
    if (left > 0) S.notifyTimer = setTimeout(cooldownOver, left + 50);
  }

  // The cooldown is over: a notification if the tab is hidden (the page itself says so otherwise).
  function cooldownOver() {
    S.notifyTimer = 0;
    if (S.cooldownUntil - Date.now() > 0) {
      scheduleNotify();
      return;
    }
    if (!S.notifyOn || !document.hidden || typeof Notification !== 'function' || Notification.permission !== 'granted') return;
    try {
      const n = new Notification('You can place a pixel again', {
        body: 'Your cooldown on ' + location.host + ' is over.',
        tag: 'placecast-cooldown',
      });
      n.onclick = () => {
        try { window.focus(); } catch (_) { /* not allowed */ }
        n.close();
      };
      S.notifications++;
    } catch (err) {
      // Some browsers (Chrome on Android) only show notifications from a service worker.
      console.warn('placecast: cannot show a notification:', err);
    }
  }

  // ---------------------------------------------------------------- start-up
  function boot() {
    const stored = Number(storageGet(COLOR_KEY));
    if (Number.isInteger(stored) && stored >= 0 && stored < 32) S.color = stored;
    loadStoredSession();
    tokenFromFragment();
    viewFromHash();
    loadTemplateSettings();
    templateFromHash();
    S.lastHash = location.hash;

    el.view.addEventListener('pointerdown', onPointerDown);
    el.view.addEventListener('pointermove', onPointerMove);
    el.view.addEventListener('pointerup', onPointerUp);
    el.view.addEventListener('pointercancel', onPointerUp);
    el.view.addEventListener('pointerleave', (e) => { if (e.pointerType === 'mouse') setHover(null); });
    el.view.addEventListener('wheel', onWheel, { passive: false });
    el.view.addEventListener('contextmenu', (e) => e.preventDefault());
    document.addEventListener('gesturestart', (e) => e.preventDefault()); // iOS page zoom
    document.addEventListener('keydown', onKey);
    el.zoomIn.addEventListener('click', () => zoomAt(S.cssW / 2, S.cssH / 2, S.scale * 2));
    el.zoomOut.addEventListener('click', () => zoomAt(S.cssW / 2, S.cssH / 2, S.scale / 2));
    el.zoomFit.addEventListener('click', userFit);
    el.message.addEventListener('click', hideMessage);
    document.addEventListener('visibilitychange', onVisibility);
    window.addEventListener('hashchange', () => {
      tokenFromFragment();
      viewFromHash();
      templateFromHash();
      S.lastHash = location.hash;
    });
    bootTools();
    window.addEventListener('online', retryNow);
    window.addEventListener('offline', () => { if (S.retryTimer) retryStatus(); });
    window.addEventListener('resize', layout);
    if (window.ResizeObserver) new ResizeObserver(layout).observe(el.stage);

    layout();
    updateCooldown();
    backgroundSession(); // anonymous session on first visit (with a proof of work if asked)
    sync(true);
  }

  // ---------------------------------------------------------------- test and scripting hooks
  window.placecast = Object.freeze({
    get version() { return S.version; },
    get status() { return S.status; }, // 'connecting' | 'live' | 'unreachable' | 'error' | 'paused'
    get statusText() { return S.statusText; },
    get width() { return S.width; },
    get height() { return S.height; },
    get palette() { return S.palette.slice(); },
    get color() { return S.color; },
    get user() { return S.user; },
    get scale() { return S.scale; },
    get frames() { return S.frames; },
    get snapshotLoads() { return S.loads; },
    /** Resize messages applied to the live model (the canvas grew without a reload). */
    get resizes() { return S.resizes; },
    /** The history view's canvas size (the size at the version shown; 0 before one is loaded). */
    get historySize() { return { width: S.hist.width, height: S.hist.height }; },
    get lastCloseCode() { return S.lastCloseCode; },
    /** The last few closes, oldest first: {code, reason, at, hint: {afterMs, jitterMs}|null, delayMs}. */
    get closes() { return S.closes.map((c) => Object.assign({}, c, { hint: c.hint && Object.assign({}, c.hint) })); },
    /** 'none' | 'verifying' | 'waiting' | 'off' | 'failed' | 'ready' (the page's session). */
    get sessionState() { return S.token ? 'ready' : S.sessionState; },
    /** Proofs of work solved, and the last one: {difficulty, nonce, hashes, ms, workers, verified}. */
    get proofs() { return S.proofs; },
    get lastProof() { return S.lastProof && Object.assign({}, S.lastProof); },
    /**
     * Solves a proof-of-work challenge as a session would (nothing is sent), with `workers` Web
     * Workers (default: cores - 1, at most 4; 0 = on the page). Resolves as lastProof.
     */
    solveProof(challenge, difficulty, workers) {
      return solveProof(String(challenge), Number(difficulty), workers === undefined ? undefined : Number(workers));
    },
    get cooldownRemainingMs() { return Math.max(0, S.cooldownUntil - Date.now()); },
    /** Palette index of pixel (x, y) in the page's copy of the canvas, or -1 outside it. */
    pixel(x, y) {
      if (!S.indices || x < 0 || y < 0 || x >= S.width || y >= S.height) return -1;
      return S.indices[y * S.width + x];
    },
    /** A copy of every pixel's palette index, row-major (a Uint8Array). */
    indices() { return S.indices ? S.indices.slice() : new Uint8Array(0); },
    /** Palette index of pixel (x, y) as shown: the history view's version while in it, else live. */
    shownPixel(x, y) {
      const H = S.hist;
      if (!(H.active && H.shown !== null && H.indices)) return this.pixel(x, y);
      if (x < 0 || y < 0 || x >= H.width || y >= H.height) return -1;
      return H.indices[y * H.width + x];
    },
    /** The history view: {open, active, version (shown), wanted, min, max, timeMs, loading, error}. */
    get historyView() {
      const H = S.hist;
      return { open: !el.historyPanel.hidden, active: H.active, version: H.shown, wanted: H.want, min: H.min, max: H.max,
        timeMs: H.timeMs, loading: H.inflight || !!H.timer, error: H.error || H.infoError };
    },
    /** The inspected pixel {x, y} (pixel panel open), or null. */
    get inspected() { return S.inspect.sel && !el.pixelPanel.hidden ? Object.assign({}, S.inspect.sel) : null; },
    get inspectMode() { return S.inspect.mode; },
    /** Template overlay: {url, x, y, opacity, show, state: 'none'|'loading'|'ok'|'error', width, height, error}. */
    get template() {
      const T = S.tpl;
      return { url: T.url, x: T.x, y: T.y, opacity: T.opacity, show: T.show, state: T.state, width: T.width, height: T.height, error: T.error };
    },
    /** Whether the page notifies when the cooldown ends, and how many notifications it showed. */
    get notifyOn() { return S.notifyOn; },
    get notifications() { return S.notifications; },
    /** Viewport (client) coordinates of the center of pixel (x, y) as currently drawn. */
    screenPoint(x, y) {
      const r = el.view.getBoundingClientRect();
      return { x: r.left + S.ox + (x + 0.5) * S.scale, y: r.top + S.oy + (y + 0.5) * S.scale };
    },
    /** Centers the view on pixel (x, y), optionally at `scale` screen pixels per canvas pixel. */
    centerOn(x, y, scale) { centerOn(x, y, scale); },
    fit() { fitView(); },
    selectColor(i) { selectColor(i); },
    /** Closes the live connection until connect(), as if the network went away for a while. */
    disconnect() { S.userPaused = true; pause('Disconnected'); },
    /** Reconnects after disconnect(), catching up with since=<version>. */
    connect() { if (S.paused) resume(); },
  });

  boot();
})();
