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
    place: 'api/v1/place',
    health: 'healthz',
    ws: 'ws',
  };
  const SESSION_KEY = 'placecast.session';
  const COLOR_KEY = 'placecast.color';
  const BACKOFF_MIN_MS = 1000;
  const BACKOFF_MAX_MS = 30000;
  const LIVED_MS = 10000; // a connection that lasted this long resets the backoff
  const GRID_SCALE = 8; // screen pixels per canvas pixel from which the grid is drawn
  const MAX_SCALE = 64;
  const HIDDEN_DISCONNECT_MS = 5 * 60 * 1000; // hidden this long: close the socket, catch up later
  const PLACE_TIMEOUT_MS = 10000;
  const FETCH_TIMEOUT_MS = 15000;
  const TOKEN_ERRORS = new Set(['missing_token', 'bad_token', 'expired_token']);

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
    lastCloseCode: 0, // close code of the last connection the server (or the network) ended
    hiddenTimer: 0,
    // session and placing
    token: null,
    user: null,
    sessionPromise: null,
    nextId: 1,
    pending: new Map(),
    placing: false,
    cooldownUntil: 0, // Date.now() based
    cooldownTimer: 0,
    messageTimer: 0,
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
      if (body && body.error) {
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
  function allocate(w, h) {
    const n = w * h;
    S.width = w;
    S.height = h;
    S.indices = new Uint8Array(n);
    S.image = new ImageData(w, h);
    S.img32 = new Uint32Array(S.image.data.buffer);
    S.off = document.createElement('canvas');
    S.off.width = w;
    S.off.height = h;
    S.offCtx = S.off.getContext('2d');
    S.fitted = false;
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
  }

  function applySnapshot(buf) {
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
    if (w !== S.width || h !== S.height || !S.indices) allocate(w, h);
    const src = new Uint8Array(buf, 24, need);
    const idx = S.indices;
    const img = S.img32;
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
    S.version = version;
    S.loaded = true;
    markDirty(0, 0, w, h);
    layout();
  }

  // Applies one binary batch. Returns 'ok', 'stale' (already applied), 'gap', 'bad' or 'ignored'.
  function applyBatch(buf) {
    if (buf.byteLength < 24) return 'bad';
    const dv = new DataView(buf);
    if (dv.getUint8(0) !== 0x01) return 'ignored';
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
    S.frames++;
  }

  function render() {
    const W = el.view.width;
    const H = el.view.height;
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.clearRect(0, 0, W, H);
    if (!S.off || !S.cssW) return;
    const dpr = S.dpr;
    const s = S.scale;
    const sx0 = Math.max(0, Math.floor(-S.ox / s));
    const sy0 = Math.max(0, Math.floor(-S.oy / s));
    const sx1 = Math.min(S.width, Math.ceil((S.cssW - S.ox) / s));
    const sy1 = Math.min(S.height, Math.ceil((S.cssH - S.oy) / s));
    if (sx1 <= sx0 || sy1 <= sy0) return;

    // A soft edge around the canvas so it stands out from the background.
    ctx.fillStyle = 'rgba(0,0,0,0.35)';
    ctx.fillRect((S.ox - 1) * dpr, (S.oy - 1) * dpr, (S.width * s + 2) * dpr, (S.height * s + 2) * dpr);

    ctx.imageSmoothingEnabled = false;
    ctx.drawImage(S.off, sx0, sy0, sx1 - sx0, sy1 - sy0,
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
  }

  function centerOn(x, y, scale) {
    if (scale) S.scale = clamp(scale, minScale(), MAX_SCALE);
    S.ox = S.cssW / 2 - (x + 0.5) * S.scale;
    S.oy = S.cssH / 2 - (y + 0.5) * S.scale;
    clampView();
    requestDraw();
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
      startPan(e.pointerId, p, e.button === 0, e.pointerType !== 'mouse');
      if (e.pointerType !== 'mouse') setHover(pixelAt(p.x, p.y));
    } else if (pointers.size === 2) {
      startPinch();
    }
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
        el.view.classList.add('panning');
      }
      if (gesture.moved) {
        S.ox = gesture.ox + dx;
        S.oy = gesture.oy + dy;
        clampView();
        requestDraw();
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
    }
  }

  function onPointerUp(e) {
    const p = pointers.get(e.pointerId) || localPoint(e);
    pointers.delete(e.pointerId);
    const g = gesture;
    if (g && g.type === 'pan' && g.id === e.pointerId) {
      gesture = null;
      el.view.classList.remove('panning');
      if (e.type === 'pointerup' && g.tap && !g.moved) {
        const px = pixelAt(p.x, p.y);
        if (px) {
          setHover(px);
          placeAt(px.x, px.y);
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
      case '0': fitView(); break;
      case 'ArrowLeft': S.ox += step; break;
      case 'ArrowRight': S.ox -= step; break;
      case 'ArrowUp': S.oy += step; break;
      case 'ArrowDown': S.oy -= step; break;
      default: return;
    }
    e.preventDefault();
    clampView();
    requestDraw();
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
  }

  function updateCooldown() {
    clearTimeout(S.cooldownTimer);
    S.cooldownTimer = 0;
    const left = S.cooldownUntil - Date.now();
    if (left > 0) {
      el.cooldown.textContent = 'Next pixel in ' + fmtClock(left);
      el.cooldown.dataset.state = 'cooling';
      document.body.classList.add('cooling');
      // Tick when the shown second changes; no ticking while the tab is hidden.
      if (!document.hidden) S.cooldownTimer = setTimeout(updateCooldown, ((left - 1) % 1000) + 1);
    } else {
      S.cooldownUntil = 0;
      el.cooldown.textContent = S.loaded ? 'Ready: pick a color, then click or tap a pixel' : '\u00a0';
      el.cooldown.dataset.state = 'ready';
      document.body.classList.remove('cooling');
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
        const res = await request(URLS.session, { method: 'POST' });
        if (!res.ok) throw await readError(res);
        const body = await res.json();
        if (!body || typeof body.token !== 'string') throw new Error('no token in the session answer');
        S.token = body.token;
        S.user = body.user || null;
        storageSet(SESSION_KEY, JSON.stringify({ token: body.token, user: body.user, expires_at: body.expires_at || 0 }));
        authSocket();
        return body.token;
      })();
      S.sessionPromise.catch(() => { S.sessionPromise = null; });
    }
    return S.sessionPromise;
  }

  function authSocket() {
    const ws = S.ws;
    if (!ws || ws.readyState !== WebSocket.OPEN || !S.token || ws.authToken === S.token) return;
    ws.authToken = S.token;
    ws.send(JSON.stringify({ type: 'auth', token: S.token }));
  }

  // ---------------------------------------------------------------- placing
  async function placeAt(x, y) {
    const left = S.cooldownUntil - Date.now();
    if (left > 0) {
      showMessage("You're cooling down. You can place another pixel in " + fmtDuration(left) + '.', 'warn', 4000);
      return { ok: false, code: 'cooldown', retryAfterMs: left };
    }
    if (S.placing) {
      showMessage('Your last pixel is still on its way to the server.', 'info', 3000);
      return { ok: false, code: 'busy' };
    }
    if (!S.palette.length) return { ok: false, code: 'not_ready' };
    S.placing = true;
    try {
      const color = S.color;
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
      case 'session_failed':
        showMessage("Couldn't start a session with the server" + (r.message ? ': ' + r.message : '') + '. Please try again later.');
        break;
      default:
        if (r.status === 503) showMessage("The server is busy and couldn't take your pixel. Please try again" + when + '.');
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
        scheduleReconnect(true, err instanceof NetError ? 'unreachable' : err.status === 503 ? 'busy' : 'error');
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
      if (!S.token) ensureToken().catch(() => {});
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
        if (!S.token) ensureToken().catch(() => {});
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
      default:
        break;
    }
  }

  function onClosed(ws, ev) {
    S.lastCloseCode = ev.code;
    failPending(ws);
    if (ws.helloAt && Date.now() - ws.helloAt > LIVED_MS) S.attempt = 0;
    const gen = S.gen;
    if (ev.code === 4001 || ws.reloadRequested) {
      scheduleReconnect(true, 'reconnecting');
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

  function clearRetry() {
    clearTimeout(S.retryTimer);
    clearTimeout(S.statusTimer);
    S.retryTimer = 0;
    S.statusTimer = 0;
    S.retryFull = false;
  }

  function scheduleReconnect(full, reason) {
    if (S.paused) return;
    clearTimeout(S.retryTimer);
    // Exponential backoff from 1 s up to 30 s, with +/-25 % jitter so clients spread out.
    const base = Math.min(BACKOFF_MAX_MS, BACKOFF_MIN_MS * Math.pow(2, S.attempt));
    const delay = clamp(Math.round(base * (0.75 + Math.random() * 0.5)), BACKOFF_MIN_MS, BACKOFF_MAX_MS);
    S.attempt = Math.min(S.attempt + 1, 10);
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

  // ---------------------------------------------------------------- start-up
  function boot() {
    const stored = Number(storageGet(COLOR_KEY));
    if (Number.isInteger(stored) && stored >= 0 && stored < 32) S.color = stored;
    loadStoredSession();

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
    el.zoomFit.addEventListener('click', fitView);
    el.message.addEventListener('click', hideMessage);
    document.addEventListener('visibilitychange', onVisibility);
    window.addEventListener('online', retryNow);
    window.addEventListener('offline', () => { if (S.retryTimer) retryStatus(); });
    window.addEventListener('resize', layout);
    if (window.ResizeObserver) new ResizeObserver(layout).observe(el.stage);

    layout();
    updateCooldown();
    if (!S.token) ensureToken().catch(() => {}); // anonymous session on first visit
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
    get lastCloseCode() { return S.lastCloseCode; },
    get cooldownRemainingMs() { return Math.max(0, S.cooldownUntil - Date.now()); },
    /** Palette index of pixel (x, y) in the page's copy of the canvas, or -1 outside it. */
    pixel(x, y) {
      if (!S.indices || x < 0 || y < 0 || x >= S.width || y >= S.height) return -1;
      return S.indices[y * S.width + x];
    },
    /** A copy of every pixel's palette index, row-major (a Uint8Array). */
    indices() { return S.indices ? S.indices.slice() : new Uint8Array(0); },
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
