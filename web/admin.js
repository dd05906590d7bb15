// The moderators' page (GET /admin): sign in with a moderator's or operator's token, look at the
// canvas, select a rectangle, preview it at an earlier version and restore it, fill, protect,
// look up who placed a pixel and ban them, change the switches, read the audit list.
//
// Plain script, no framework, nothing from elsewhere: it is embedded in the binary like the
// client. Every action is one admin API call (PROTOCOL.md) with the token the moderator typed;
// the token lives in sessionStorage (this tab only) and never in the address. Every error shows
// the server's own message. Tests read the page's state through window.placecastAdmin.
'use strict';

(function () {
  const TOKEN_KEY = 'placecast-admin-token';
  const ZOOMS = [1, 2, 4, 8, 16, 32];
  const REFRESH_MS = 5000;
  const PAST_RETRIES = 5; // 503 history_busy: retried after its Retry-After this many times

  const $ = (id) => document.getElementById(id);
  const el = {
    who: $('who'), signinForm: $('signin-form'), tokenInput: $('token-input'), signin: $('signin'),
    signout: $('signout'), signinResult: $('signin-result'), main: $('main'),
    zoom: $('zoom'), zoomIn: $('zoom-in'), zoomOut: $('zoom-out'), reloadCanvas: $('reload-canvas'),
    autoRefresh: $('auto-refresh'), canvasVersion: $('canvas-version'), hover: $('hover'),
    stage: $('stage'), wrap: $('wrap'), view: $('view'), overlay: $('overlay'), sel: $('sel'), selPast: $('sel-past'),
    canvasResult: $('canvas-result'),
    selX: $('sel-x'), selY: $('sel-y'), selW: $('sel-w'), selH: $('sel-h'), selAll: $('sel-all'), selText: $('sel-text'),
    histFields: $('hist-fields'), histRange: $('hist-range'), histVersion: $('hist-version'), histRangeText: $('hist-range-text'),
    histTime: $('hist-time'), preview: $('preview'), previewTime: $('preview-time'), previewLabel: $('preview-label'), previewResult: $('preview-result'),
    prevThen: $('prev-then'), prevNow: $('prev-now'), prevThenCaption: $('prev-then-caption'), overlayPast: $('overlay-past'),
    restore: $('restore'), histResult: $('hist-result'),
    fillFields: $('fill-fields'), swatches: $('fill-swatches'), fill: $('fill'), protect: $('protect'), unprotect: $('unprotect'),
    protectedList: $('protected-list'), fillResult: $('fill-result'),
    pixelFields: $('pixel-fields'), pixelX: $('pixel-x'), pixelY: $('pixel-y'), pixelLookup: $('pixel-lookup'),
    pixelBody: $('pixel-body'), pixelHistory: $('pixel-history'), banRevert: $('ban-revert'), banMinutes: $('ban-minutes'),
    banPixelUser: $('ban-pixel-user'), pixelResult: $('pixel-result'),
    userFields: $('user-fields'), userName: $('user-name'), userKind: $('user-kind'), userRevert: $('user-revert'),
    userMinutes: $('user-minutes'), userBan: $('user-ban'), userUnban: $('user-unban'), userResult: $('user-result'),
    swPaused: $('sw-paused'), swCooldown: $('sw-cooldown'), swEnd: $('sw-end'), swBanned: $('sw-banned'), swProtected: $('sw-protected'),
    swFields: $('sw-fields'), pause: $('pause'), resume: $('resume'), cooldownS: $('cooldown-s'), setCooldown: $('set-cooldown'),
    endAt: $('end-at'), setEnd: $('set-end'), swResult: $('sw-result'),
    auditRefresh: $('audit-refresh'), auditNote: $('audit-note'), auditResult: $('audit-result'), auditBody: $('audit-body'),
  };

  const S = {
    token: null,
    who: null, // the holder's name, once known
    role: null, // 'moderator' | 'operator' | null (unknown)
    info: null, // GET /api/v1/canvas/info
    width: 0,
    height: 0,
    palette: [],
    image: null, // ImageBitmap of the current canvas
    version: null, // its version
    zoom: 'fit',
    scale: 1, // CSS pixels per canvas pixel
    sel: null, // {x, y, w, h}
    drag: null,
    hist: null, // GET /api/v1/history/info
    preview: null, // {version, timeMs, bitmap}
    previewWant: null, // the next past canvas to load ({q, label})
    previewLoading: false,
    pixel: null, // {x, y, data}
    pixelSeq: 0,
    banTarget: null, // the name the pixel panel's ban button bans
    audit: null,
    busy: 0, // admin requests running
    loads: { canvas: 0, audit: 0, info: 0, hist: 0 },
    timer: null,
    color: 0,
    touched: { cooldown: false, end: false, version: false },
    lastAnswer: null, // the answer of the last action (its version names its audit entry)
    wantVersion: 0, // the canvas reload waits (briefly) until the snapshot shows this version
    pixelBanning: false,
  };

  // ---------------------------------------------------------------- the API
  class ApiError extends Error {
    constructor(status, code, message) {
      super(message);
      this.status = status;
      this.code = code;
    }
  }

  function describe(err) {
    if (err instanceof ApiError) {
      return err.status ? `${err.message} (${err.status} ${err.code})` : err.message;
    }
    return String(err && err.message || err);
  }

  // One fetch: the response if it is a success, else an ApiError carrying the server's code and
  // message (and its Retry-After, in seconds, as `retryAfter`).
  async function fetchOk(path, init) {
    let res;
    try {
      res = await fetch(path, init);
    } catch (e) {
      throw new ApiError(0, 'network', `Can't reach the server (${e.message})`);
    }
    if (res.ok) return res;
    const text = await res.text();
    let json = null;
    try { json = JSON.parse(text); } catch (_) { /* not JSON */ }
    const err = errorOf(res, json, text);
    err.retryAfter = Number(res.headers.get('Retry-After'));
    throw err;
  }

  // One API request; the answer's JSON.
  async function api(method, path, body, { auth = true } = {}) {
    const headers = {};
    if (auth && S.token) headers.Authorization = 'Bearer ' + S.token;
    if (body !== undefined) headers['Content-Type'] = 'application/json';
    const init = { method, headers, body: body === undefined ? undefined : JSON.stringify(body), cache: 'no-store' };
    const text = await (await fetchOk(path, init)).text();
    try { return JSON.parse(text); } catch (_) { return null; }
  }

  function errorOf(res, json, text) {
    const e = json && json.error;
    if (e && typeof e.message === 'string') return new ApiError(res.status, String(e.code || 'error'), e.message);
    return new ApiError(res.status, 'http_' + res.status, (text || res.statusText || 'request failed').slice(0, 300));
  }

  // ---------------------------------------------------------------- results and busy buttons
  function show(out, state, text) {
    out.dataset.state = state;
    out.textContent = text;
  }

  // Runs `fn` with `controls` (buttons or fieldsets) disabled, showing its outcome in `out`:
  // the string it returns, or the server's message. Focus comes back to where it was.
  async function act(controls, out, fn, { refresh = true } = {}) {
    const focused = document.activeElement;
    for (const c of controls) c.disabled = true;
    S.busy++;
    show(out, 'busy', 'Working…');
    let answer = null;
    try {
      const text = await fn();
      show(out, 'ok', text === undefined || text === null ? 'Done.' : text);
      answer = true;
    } catch (err) {
      show(out, 'error', describe(err));
    } finally {
      S.busy--;
      for (const c of controls) c.disabled = false;
      if (focused && focused !== document.body && document.activeElement !== focused && focused.isConnected) {
        try { focused.focus({ preventScroll: true }); } catch (_) { /* not focusable */ }
      }
      updateBanButton();
    }
    if (S.lastAnswer && S.lastAnswer.version) S.wantVersion = Math.max(S.wantVersion, S.lastAnswer.version);
    if (refresh && S.token) await refreshAll();
    if (S.lastAnswer) {
      learnName(S.lastAnswer);
      S.lastAnswer = null;
    }
    return answer;
  }

  // A request refused before it is sent (a missing selection): shown like the server's errors.
  function local(message) { return new ApiError(0, 'local', message); }

  // ---------------------------------------------------------------- formatting
  const fmtTime = (ms) => (ms === null || ms === undefined ? '—' : new Date(ms).toLocaleString());
  const rectText = (r) => `${r.w}×${r.h} at (${r.x}, ${r.y})`;
  const plural = (n, one, many) => `${n} ${n === 1 ? one : many}`;
  function toLocalInput(ms) {
    const d = new Date(ms);
    const p = (n) => String(n).padStart(2, '0');
    return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())}T${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}`;
  }
  function fromLocalInput(value) {
    if (!value) return null;
    const ms = new Date(value).getTime();
    return Number.isFinite(ms) ? ms : null;
  }
  function intOf(input, what, min = 0) {
    const s = String(input.value).trim();
    if (!/^\d+$/.test(s)) throw local(`${what} must be a whole number`);
    const n = Number(s);
    if (n < min) throw local(`${what} must be at least ${min}`);
    return n;
  }
  function swatch(color) {
    const s = document.createElement('span');
    s.className = 'pixel-swatch';
    s.style.background = S.palette[color] || '#000';
    s.setAttribute('aria-hidden', 'true');
    return s;
  }

  // ---------------------------------------------------------------- sign in and out
  async function signIn(token) {
    S.token = token;
    try {
      await api('GET', '/api/v1/admin/audit?limit=1');
    } catch (err) {
      S.token = null;
      if (err instanceof ApiError && err.status === 401) throw new ApiError(401, err.code, 'Unknown token: ' + err.message);
      throw err;
    }
    // Who: an operator's call (harmless: it reads the limits) answers a moderator with a 403
    // that names them.
    S.who = null;
    S.role = null;
    try {
      await api('GET', '/api/v1/admin/limits');
      S.role = 'operator';
    } catch (err) {
      if (err instanceof ApiError && err.code === 'forbidden_role') {
        const m = /;\s*(\S+) is an? (\w+)\s*$/.exec(err.message);
        S.role = m ? m[2] : 'moderator';
        if (m) S.who = m[1];
      }
    }
    try { sessionStorage.setItem(TOKEN_KEY, token); } catch (_) { /* storage off: this page only */ }
    showWho();
    el.signinForm.hidden = true;
    el.signout.hidden = false;
    el.main.hidden = false;
    startRefresh();
    await refreshAll();
    fitIfNeeded();
  }

  function showWho() {
    if (!S.token) {
      el.who.dataset.state = 'signed-out';
      el.who.textContent = 'Not signed in';
      return;
    }
    el.who.dataset.state = 'signed-in';
    const role = S.role ? ` (${S.role})` : '';
    el.who.textContent = S.who ? `Signed in as ${S.who}${role}` : `Signed in as ${S.role === 'operator' ? 'an operator' : 'a holder'}${role}`;
  }

  function signOut() {
    try { sessionStorage.removeItem(TOKEN_KEY); } catch (_) { /* storage off */ }
    S.token = null;
    S.who = null;
    S.role = null;
    stopRefresh();
    el.main.hidden = true;
    el.signout.hidden = true;
    el.signinForm.hidden = false;
    el.tokenInput.value = '';
    show(el.signinResult, 'ok', 'Signed out.');
    showWho();
    el.tokenInput.focus();
  }

  // After an action of a holder whose name the sign-in could not learn (an operator): the
  // audit names who made the entry at that version.
  function learnName(answer) {
    if (S.who || !answer || !S.audit) return;
    const v = answer.version - (answer.pixels || 0);
    const e = S.audit.entries.find((x) => x.version === v);
    if (e && e.by) {
      S.who = e.by;
      showWho();
    }
  }

  // ---------------------------------------------------------------- loading
  let refreshing = null;
  function refreshAll() {
    if (!refreshing) {
      refreshing = Promise.all([loadInfo(), loadCanvas(), loadHistInfo(), loadAudit()]).finally(() => { refreshing = null; });
      return refreshing;
    }
    // One is running: run another after it (what it read may predate the action).
    return refreshing.then(() => refreshAll());
  }

  function startRefresh() {
    stopRefresh();
    S.timer = setInterval(() => {
      if (!S.token || !el.autoRefresh.checked || document.visibilityState !== 'visible' || S.drag || refreshing) return;
      refreshAll();
    }, REFRESH_MS);
  }
  function stopRefresh() {
    if (S.timer) clearInterval(S.timer);
    S.timer = null;
  }

  async function loadInfo() {
    try {
      const info = await api('GET', '/api/v1/canvas/info', undefined, { auth: false });
      const sized = info.width !== S.width || info.height !== S.height;
      S.info = info;
      S.width = info.width;
      S.height = info.height;
      if (S.palette.join() !== info.palette.join()) {
        S.palette = info.palette.slice();
        buildSwatches();
      }
      if (sized) {
        el.view.width = S.width;
        el.view.height = S.height;
        if (S.image) drawView();
        applyZoom();
      }
      drawProtected();
      S.loads.info++;
    } catch (err) {
      show(el.canvasResult, 'error', 'Canvas info: ' + describe(err));
    }
  }

  // The current canvas as PNG. After an action the snapshot may be a batch behind its answer:
  // it is fetched again (for at most 3 s) until it shows the action's version.
  let canvasLoading = false;
  async function loadCanvas() {
    if (canvasLoading) return;
    canvasLoading = true;
    try {
      const deadline = Date.now() + 3000;
      while (!(await loadCanvasOnce()) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
    } catch (err) {
      show(el.canvasResult, 'error', 'Canvas: ' + describe(err));
    } finally {
      canvasLoading = false;
    }
  }

  // One fetch; whether it reached S.wantVersion.
  async function loadCanvasOnce() {
    const res = await fetchOk('/api/v1/canvas.png', { cache: 'no-store' });
    const version = Number(res.headers.get('X-Canvas-Version'));
    const bitmap = await createImageBitmap(await res.blob());
    if (S.image && S.image.close) S.image.close();
    S.image = bitmap;
    S.version = version;
    // The canvas only grows (POST /api/v1/admin/resize): a picture larger than the size the
    // info gave is the newer size (the info may be from just before a resize).
    if (bitmap.width > S.width || bitmap.height > S.height) {
      S.width = Math.max(S.width, bitmap.width);
      S.height = Math.max(S.height, bitmap.height);
    }
    if (S.width !== el.view.width || S.height !== el.view.height) {
      el.view.width = S.width;
      el.view.height = S.height;
      applyZoom();
    }
    drawView();
    drawCompare();
    el.canvasVersion.textContent = `version ${version}`;
    if (el.canvasResult.dataset.state === 'error') show(el.canvasResult, 'ok', '');
    S.loads.canvas++;
    return version >= S.wantVersion;
  }

  async function loadHistInfo() {
    try {
      const h = await api('GET', '/api/v1/history/info', undefined, { auth: false });
      S.hist = h;
      el.histRange.min = String(h.first_version);
      el.histRange.max = String(h.version);
      el.histVersion.min = String(h.first_version);
      el.histVersion.max = String(h.version);
      if (!S.touched.version && !S.preview) {
        el.histVersion.value = String(h.version);
      }
      el.histRange.value = el.histVersion.value;
      el.histRangeText.textContent = `history: ${h.first_version} to ${h.version}`;
      S.loads.hist++;
    } catch (err) {
      el.histRangeText.textContent = 'history: ' + describe(err);
    }
  }

  async function loadAudit() {
    try {
      const a = await api('GET', '/api/v1/admin/audit?limit=100');
      S.audit = a;
      renderAudit(a);
      renderSwitches(a.switches);
      if (el.auditResult.dataset.state === 'error') show(el.auditResult, 'ok', '');
      S.loads.audit++;
    } catch (err) {
      show(el.auditResult, 'error', 'Audit: ' + describe(err));
    }
  }

  // ---------------------------------------------------------------- the canvas view
  function drawView() {
    const g = el.view.getContext('2d');
    g.imageSmoothingEnabled = false;
    g.clearRect(0, 0, el.view.width, el.view.height);
    if (S.image) g.drawImage(S.image, 0, 0);
  }

  function fitScale() {
    // The stage's size when full: its width, and its maximum height (its content sets its height).
    const w = Math.max(50, el.stage.clientWidth - 2);
    const h = Math.max(50, (parseFloat(getComputedStyle(el.stage).maxHeight) || 600) - 2);
    if (!S.width || !S.height) return 1;
    return Math.max(0.05, Math.min(w / S.width, h / S.height, 32));
  }

  // Sets the zoom ('fit' or a factor), keeping the canvas point at the middle of the view there.
  function setZoom(z) {
    const st = el.stage;
    const old = S.scale;
    const cx = (st.scrollLeft + st.clientWidth / 2) / old;
    const cy = (st.scrollTop + st.clientHeight / 2) / old;
    S.zoom = z;
    el.zoom.value = String(z);
    applyZoom();
    st.scrollLeft = cx * S.scale - st.clientWidth / 2;
    st.scrollTop = cy * S.scale - st.clientHeight / 2;
  }

  function applyZoom() {
    S.scale = S.zoom === 'fit' ? fitScale() : Number(S.zoom);
    const w = S.width * S.scale;
    const h = S.height * S.scale;
    el.view.style.width = w + 'px';
    el.view.style.height = h + 'px';
    el.wrap.style.width = w + 'px';
    el.wrap.style.height = h + 'px';
    drawProtected();
    drawSelection();
  }

  let fitted = false;
  function fitIfNeeded() {
    if (!fitted && S.width) {
      fitted = true;
      applyZoom();
    }
  }

  function place(node, r) {
    node.style.left = r.x * S.scale + 'px';
    node.style.top = r.y * S.scale + 'px';
    node.style.width = r.w * S.scale + 'px';
    node.style.height = r.h * S.scale + 'px';
  }

  function drawProtected() {
    for (const n of Array.from(el.overlay.querySelectorAll('.prot'))) n.remove();
    const list = (S.info && S.info.protected) || [];
    for (const r of list) {
      const d = document.createElement('div');
      d.className = 'prot';
      d.title = 'protected: ' + rectText(r);
      place(d, r);
      el.overlay.insertBefore(d, el.overlay.firstChild);
    }
    el.protectedList.textContent = '';
    if (!list.length) {
      const li = document.createElement('li');
      li.textContent = 'none';
      el.protectedList.appendChild(li);
    }
    for (const r of list) {
      const li = document.createElement('li');
      li.append(rectText(r) + ' ');
      const b = document.createElement('button');
      b.type = 'button';
      b.textContent = 'select';
      b.setAttribute('aria-label', 'select the protected rectangle ' + rectText(r));
      b.addEventListener('click', () => setSelection({ x: r.x, y: r.y, w: r.w, h: r.h }));
      li.appendChild(b);
      el.protectedList.appendChild(li);
    }
  }

  // The canvas pixel under a pointer event (clamped to the canvas).
  function pixelAt(e) {
    const r = el.view.getBoundingClientRect();
    const x = Math.floor((e.clientX - r.left) / r.width * S.width);
    const y = Math.floor((e.clientY - r.top) / r.height * S.height);
    return { x: Math.min(S.width - 1, Math.max(0, x)), y: Math.min(S.height - 1, Math.max(0, y)) };
  }

  function onPointerDown(e) {
    if (e.button !== 0 || !S.width) return;
    e.preventDefault();
    const p = pixelAt(e);
    S.drag = { start: p, sx: e.clientX, sy: e.clientY, moved: false, id: e.pointerId };
    try { el.wrap.setPointerCapture(e.pointerId); } catch (_) { /* synthetic */ }
  }
  function onPointerMove(e) {
    const p = S.width ? pixelAt(e) : null;
    if (p) el.hover.textContent = `(${p.x}, ${p.y})`;
    const d = S.drag;
    if (!d || e.pointerId !== d.id) return;
    if (!d.moved && Math.hypot(e.clientX - d.sx, e.clientY - d.sy) >= 4) d.moved = true;
    if (d.moved) setSelection(rectBetween(d.start, p));
  }
  function onPointerUp(e) {
    const d = S.drag;
    if (!d || e.pointerId !== d.id) return;
    S.drag = null;
    if (d.moved) setSelection(rectBetween(d.start, pixelAt(e)));
    else inspect(d.start.x, d.start.y);
  }
  function rectBetween(a, b) {
    return { x: Math.min(a.x, b.x), y: Math.min(a.y, b.y), w: Math.abs(a.x - b.x) + 1, h: Math.abs(a.y - b.y) + 1 };
  }

  // ---------------------------------------------------------------- the selection
  function clampRect(r) {
    const x = Math.min(Math.max(0, r.x | 0), Math.max(0, S.width - 1));
    const y = Math.min(Math.max(0, r.y | 0), Math.max(0, S.height - 1));
    const w = Math.min(Math.max(1, r.w | 0), S.width - x);
    const h = Math.min(Math.max(1, r.h | 0), S.height - y);
    return { x, y, w, h };
  }

  function setSelection(r, { fromInputs = false } = {}) {
    S.sel = r ? clampRect(r) : null;
    if (S.sel && !fromInputs) {
      el.selX.value = String(S.sel.x);
      el.selY.value = String(S.sel.y);
      el.selW.value = String(S.sel.w);
      el.selH.value = String(S.sel.h);
    }
    el.selText.textContent = S.sel ? `${rectText(S.sel)}: ${plural(S.sel.w * S.sel.h, 'pixel', 'pixels')}` : 'No selection';
    drawSelection();
    drawCompare();
  }

  function selectionFromInputs(commit) {
    const vals = [el.selX, el.selY, el.selW, el.selH].map((i) => String(i.value).trim());
    if (!vals.every((v) => /^\d+$/.test(v))) return;
    const [x, y, w, h] = vals.map(Number);
    setSelection({ x, y, w, h }, { fromInputs: !commit });
  }

  function drawSelection() {
    if (!S.sel) {
      el.sel.hidden = true;
      el.selPast.hidden = true;
      return;
    }
    el.sel.hidden = false;
    place(el.sel, S.sel);
    place(el.selPast, S.sel);
  }

  function requireSel() {
    if (!S.sel) throw local('Select a rectangle first (drag on the canvas, or type x, y, w, h)');
    return S.sel;
  }

  // ---------------------------------------------------------------- the past: preview and restore
  // Loads the canvas at `q` ('at=V' or 't=MS'); one request at a time, the newest wish wins.
  async function wantPast(q) {
    S.previewWant = q;
    if (S.previewLoading) return;
    S.previewLoading = true;
    el.preview.disabled = true;
    el.previewTime.disabled = true;
    try {
      while (S.previewWant !== null) {
        const next = S.previewWant;
        S.previewWant = null;
        show(el.previewResult, 'busy', 'Loading the earlier canvas…');
        try {
          await loadPast(next);
          show(el.previewResult, 'ok', '');
        } catch (err) {
          show(el.previewResult, 'error', 'Preview: ' + describe(err));
        }
      }
    } finally {
      S.previewLoading = false;
      el.preview.disabled = false;
      el.previewTime.disabled = false;
    }
  }

  async function loadPast(q) {
    for (let attempt = 0; ; attempt++) {
      let res;
      try {
        res = await fetchOk('/api/v1/canvas.png?' + q);
      } catch (err) {
        const after = err.retryAfter;
        if ((err.code === 'history_busy' || err.code === 'catch_up_rate_limited') && attempt < PAST_RETRIES && after >= 0 && after <= 10) {
          show(el.previewResult, 'busy', `The server is busy (${err.code}); retrying in ${after || 1} s…`);
          await new Promise((r) => setTimeout(r, (after || 1) * 1000));
          continue;
        }
        throw err;
      }
      const version = Number(res.headers.get('X-Canvas-Version'));
      const t = res.headers.get('X-Canvas-Time-Ms');
      const bitmap = await createImageBitmap(await res.blob());
      if (S.preview && S.preview.bitmap && S.preview.bitmap.close) S.preview.bitmap.close();
      S.preview = { version, timeMs: t === null ? null : Number(t), bitmap };
      el.histVersion.value = String(version);
      if (S.hist && version > S.hist.version) el.histRange.max = String(version);
      el.histRange.value = String(version);
      const when = S.preview.timeMs === null ? 'the empty canvas' : fmtTime(S.preview.timeMs);
      el.previewLabel.textContent = `Showing version ${version} (${when})`;
      el.prevThenCaption.textContent = `version ${version}`;
      el.restore.textContent = `Restore the selection to version ${version}`;
      drawCompare();
      return;
    }
  }

  function previewVersion() {
    try {
      S.touched.version = true;
      wantPast('at=' + intOf(el.histVersion, 'The version'));
    } catch (err) {
      show(el.previewResult, 'error', describe(err));
    }
  }

  function drawRegion(canvas, bitmap, r, maxCss) {
    const g = canvas.getContext('2d');
    if (!bitmap || !r) {
      canvas.width = 1;
      canvas.height = 1;
      g.clearRect(0, 0, 1, 1);
      canvas.style.width = '';
      canvas.style.height = '';
      return;
    }
    canvas.width = r.w;
    canvas.height = r.h;
    g.imageSmoothingEnabled = false;
    g.clearRect(0, 0, r.w, r.h);
    g.drawImage(bitmap, r.x, r.y, r.w, r.h, 0, 0, r.w, r.h);
    if (maxCss) {
      const s = Math.min(maxCss / r.w, maxCss / r.h, 16);
      canvas.style.width = r.w * s + 'px';
      canvas.style.height = r.h * s + 'px';
    }
  }

  function drawCompare() {
    const r = S.sel;
    const past = S.preview && S.preview.bitmap;
    drawRegion(el.prevThen, past, r, 170);
    drawRegion(el.prevNow, S.image, r, 170);
    const over = el.overlayPast.checked && past && r;
    el.selPast.hidden = !over;
    if (over) drawRegion(el.selPast, past, r, 0);
  }

  async function restore() {
    const r = requireSel();
    const version = intOf(el.histVersion, 'The version');
    const a = await api('POST', '/api/v1/admin/restore', { x: r.x, y: r.y, w: r.w, h: r.h, version });
    S.lastAnswer = a;
    return `Restored ${rectText(r)} to version ${version}: ${plural(a.pixels, 'pixel', 'pixels')} changed, logged up to version ${a.version}` +
      (a.applied ? '.' : ' (not yet applied on this node).');
  }

  // ---------------------------------------------------------------- fill and protect
  function buildSwatches() {
    el.swatches.textContent = '';
    S.palette.forEach((hex, i) => {
      const l = document.createElement('label');
      l.style.background = hex;
      l.title = `color ${i} ${hex}`;
      const input = document.createElement('input');
      input.type = 'radio';
      input.name = 'fill-color';
      input.value = String(i);
      input.dataset.index = String(i);
      input.setAttribute('aria-label', `color ${i} ${hex}`);
      if (i === S.color) input.checked = true;
      input.addEventListener('change', () => { if (input.checked) S.color = i; });
      l.appendChild(input);
      el.swatches.appendChild(l);
    });
    if (S.color >= S.palette.length) S.color = 0;
  }

  async function fill() {
    const r = requireSel();
    const color = S.color;
    const a = await api('POST', '/api/v1/admin/fill', { x: r.x, y: r.y, w: r.w, h: r.h, color });
    S.lastAnswer = a;
    return `Filled ${rectText(r)} with color ${color} (${S.palette[color]}): ${plural(a.pixels, 'pixel', 'pixels')} changed, logged up to version ${a.version}.`;
  }

  async function protect(on) {
    const r = requireSel();
    const a = await api('POST', '/api/v1/admin/' + (on ? 'protect' : 'unprotect'), { x: r.x, y: r.y, w: r.w, h: r.h });
    S.lastAnswer = a;
    return `${on ? 'Protected' : 'Unprotected inside'} ${rectText(r)} (version ${a.version}).`;
  }

  // ---------------------------------------------------------------- pixel info and bans
  async function inspect(x, y) {
    const seq = ++S.pixelSeq;
    S.pixel = { x, y, data: null };
    S.banTarget = null;
    el.pixelX.value = String(x);
    el.pixelY.value = String(y);
    el.pixelHistory.textContent = '';
    el.pixelBody.textContent = `Pixel (${x}, ${y}): looking it up…`;
    updateBanButton();
    try {
      const d = await api('GET', `/api/v1/pixel?x=${x}&y=${y}&history=10`, undefined, { auth: false });
      if (seq !== S.pixelSeq) return;
      S.pixel.data = d;
      renderPixel(d);
    } catch (err) {
      if (seq !== S.pixelSeq) return;
      el.pixelBody.textContent = `Pixel (${x}, ${y}): ${describe(err)}`;
    }
    updateBanButton();
  }

  function renderPixel(d) {
    const b = el.pixelBody;
    b.textContent = '';
    const head = document.createElement('div');
    head.append(`Pixel (${d.x}, ${d.y}):`);
    const last = d.last;
    if (!last) {
      head.append(' never edited.');
      b.appendChild(head);
      return;
    }
    head.append(swatch(last.color), ` color ${last.color}, placed by `);
    const who = document.createElement('b');
    who.id = 'pixel-user';
    who.textContent = last.user === null ? 'an unknown user' : last.user;
    head.append(who, ` at ${fmtTime(last.ts_ms)}, version `);
    const v = document.createElement('span');
    v.id = 'pixel-version';
    v.textContent = String(last.version);
    head.append(v, '.');
    b.appendChild(head);
    const note = document.createElement('div');
    note.id = 'pixel-ban-note';
    const mode = S.hist && S.hist.pixel_lookup;
    if (last.user === null) {
      note.textContent = 'No name is known for whoever placed it, and lookups give no user key: they cannot be banned from here.';
    } else if (mode === 'hashed') {
      note.textContent = 'This server shows hashed names (--pixel-lookup hashed): a ban needs the name or the 16-hex user key, which lookups do not give, so they cannot be banned from here.';
    } else {
      S.banTarget = last.user;
    }
    if (note.textContent) b.appendChild(note);
    for (const h of d.history || []) {
      const li = document.createElement('li');
      li.append(swatch(h.color), ` color ${h.color} by ${h.user === null ? 'unknown' : h.user}, ${fmtTime(h.ts_ms)}, version ${h.version}`);
      el.pixelHistory.appendChild(li);
    }
  }

  function updateBanButton() {
    const t = S.banTarget;
    el.banPixelUser.disabled = !t || S.pixelBanning === true;
    el.banPixelUser.textContent = t ? `Ban ${t}` : 'Ban this user';
  }

  function revertSince(check, minutesInput) {
    if (!check.checked) return undefined;
    const min = intOf(minutesInput, 'The minutes', 1);
    const ms = Date.now() - min * 60000;
    if (ms < 1000) throw local('That is before 1970');
    return ms;
  }

  async function ban(user, key, since) {
    const body = key ? { user_key: user } : { user };
    if (since !== undefined) body.revert_since_ms = since;
    const a = await api('POST', '/api/v1/admin/ban', body);
    S.lastAnswer = a;
    const reverted = since !== undefined ? `; ${plural(a.pixels, 'pixel', 'pixels')} of theirs reverted` : '';
    return `Banned ${user} (version ${a.version})${reverted}.`;
  }

  async function banPixelUser() {
    const user = S.banTarget;
    if (!user) throw local('No user to ban: look up a pixel somebody placed');
    const since = revertSince(el.banRevert, el.banMinutes);
    S.pixelBanning = true;
    try {
      const text = await ban(user, false, since);
      if (S.pixel) inspect(S.pixel.x, S.pixel.y);
      return text;
    } finally {
      S.pixelBanning = false;
    }
  }

  function userArg() {
    const name = el.userName.value.trim();
    if (!name) throw local('Type a user name or user key');
    const key = el.userKind.value === 'user_key';
    if (key && !/^[0-9a-fA-F]{16}$/.test(name)) throw local('A user key is 16 hex digits');
    return { name, key };
  }

  // ---------------------------------------------------------------- switches
  function renderSwitches(sw) {
    if (!sw) return;
    el.swPaused.textContent = sw.paused ? 'paused' : 'open';
    el.swPaused.dataset.paused = String(!!sw.paused);
    el.swCooldown.textContent = `${sw.cooldown_ms / 1000} s`;
    el.swEnd.textContent = sw.end_at_ms === null ? 'none' : fmtTime(sw.end_at_ms) + (sw.end_at_ms <= Date.now() ? ' (passed)' : '');
    el.swBanned.textContent = String(sw.banned);
    const prot = Array.isArray(sw.protected) ? sw.protected.length : (sw.protected || 0);
    el.swProtected.textContent = plural(prot, 'rectangle', 'rectangles');
    if (!S.touched.cooldown) el.cooldownS.value = String(Math.round(sw.cooldown_ms / 1000));
    if (!S.touched.end && sw.end_at_ms !== null) el.endAt.value = toLocalInput(sw.end_at_ms);
  }

  // ---------------------------------------------------------------- audit
  function details(e) {
    switch (e.action) {
      case 'cooldown': return `${e.seconds} s`;
      case 'end': return `at ${fmtTime(e.at_ms)}`;
      case 'ban':
      case 'unban': {
        let s = `${e.user === null || e.user === undefined ? '(no name)' : e.user} · key ${e.user_key}`;
        if (e.revert_since_ms) s += ` · revert since ${fmtTime(e.revert_since_ms)}`;
        return s;
      }
      case 'fill': return `${rectText(e.rect)} · color ${e.color}${S.palette[e.color] ? ' ' + S.palette[e.color] : ''}`;
      case 'restore': return `${rectText(e.rect)} · to version ${e.to_version}`;
      case 'protect':
      case 'unprotect': return rectText(e.rect);
      default: return '';
    }
  }

  function renderAudit(a) {
    const body = el.auditBody;
    body.textContent = '';
    for (const e of a.entries) {
      const tr = document.createElement('tr');
      tr.dataset.version = String(e.version);
      tr.dataset.action = e.action;
      const cells = [fmtTime(e.ts_ms), e.by, e.action, details(e), String(e.version)];
      cells.forEach((text, i) => {
        const td = document.createElement('td');
        td.textContent = text;
        if (i === 0) td.title = new Date(e.ts_ms).toISOString();
        tr.appendChild(td);
      });
      body.appendChild(tr);
    }
    el.auditNote.textContent = a.entries.length ? `${plural(a.entries.length, 'entry', 'entries')}` : 'no entries yet';
  }

  // ---------------------------------------------------------------- wiring
  el.signinForm.addEventListener('submit', (e) => {
    e.preventDefault();
    const token = el.tokenInput.value.trim();
    if (!token) return;
    act([el.signin, el.tokenInput], el.signinResult, async () => {
      await signIn(token);
      el.tokenInput.value = '';
      return '';
    }, { refresh: false });
  });
  el.signout.addEventListener('click', signOut);

  el.zoom.addEventListener('change', () => setZoom(el.zoom.value === 'fit' ? 'fit' : Number(el.zoom.value)));
  el.zoomIn.addEventListener('click', () => setZoom(ZOOMS.find((z) => z > S.scale + 1e-9) || ZOOMS[ZOOMS.length - 1]));
  el.zoomOut.addEventListener('click', () => {
    const lower = ZOOMS.filter((z) => z < S.scale - 1e-9);
    setZoom(lower.length ? lower[lower.length - 1] : 'fit');
  });
  window.addEventListener('resize', () => { if (S.zoom === 'fit') applyZoom(); });
  el.reloadCanvas.addEventListener('click', () => act([el.reloadCanvas], el.canvasResult, async () => { await refreshAll(); return ''; }, { refresh: false }));

  el.wrap.addEventListener('pointerdown', onPointerDown);
  el.wrap.addEventListener('pointermove', onPointerMove);
  el.wrap.addEventListener('pointerup', onPointerUp);
  el.wrap.addEventListener('pointercancel', () => { S.drag = null; });
  el.wrap.addEventListener('pointerleave', () => { el.hover.textContent = ''; });

  for (const i of [el.selX, el.selY, el.selW, el.selH]) {
    i.addEventListener('input', () => selectionFromInputs(false));
    i.addEventListener('change', () => selectionFromInputs(true));
  }
  el.selAll.addEventListener('click', () => setSelection({ x: 0, y: 0, w: S.width, h: S.height }));

  el.histRange.addEventListener('input', () => { el.histVersion.value = el.histRange.value; });
  el.histRange.addEventListener('change', () => { el.histVersion.value = el.histRange.value; previewVersion(); });
  // Typing marks the field as the moderator's at once: the periodic history refresh must not put
  // the head version back before the field is left (a 'change' comes only on blur).
  el.histVersion.addEventListener('input', () => { S.touched.version = true; });
  el.histVersion.addEventListener('change', () => { S.touched.version = true; el.histRange.value = el.histVersion.value; previewVersion(); });
  el.preview.addEventListener('click', previewVersion);
  el.previewTime.addEventListener('click', () => {
    const ms = fromLocalInput(el.histTime.value);
    if (ms === null) return show(el.previewResult, 'error', 'Choose a date and time first');
    S.touched.version = true;
    wantPast('t=' + ms);
  });
  el.overlayPast.addEventListener('change', drawCompare);
  el.restore.addEventListener('click', () => act([el.histFields], el.histResult, restore));

  el.fill.addEventListener('click', () => act([el.fillFields], el.fillResult, fill));
  el.protect.addEventListener('click', () => act([el.fillFields], el.fillResult, () => protect(true)));
  el.unprotect.addEventListener('click', () => act([el.fillFields], el.fillResult, () => protect(false)));

  el.pixelLookup.addEventListener('click', () => {
    try {
      const x = intOf(el.pixelX, 'x');
      const y = intOf(el.pixelY, 'y');
      inspect(x, y);
    } catch (err) {
      show(el.pixelResult, 'error', describe(err));
    }
  });
  el.banPixelUser.addEventListener('click', () => act([el.pixelFields], el.pixelResult, banPixelUser));

  el.userBan.addEventListener('click', () => act([el.userFields], el.userResult, () => {
    const { name, key } = userArg();
    return ban(name, key, revertSince(el.userRevert, el.userMinutes));
  }));
  el.userUnban.addEventListener('click', () => act([el.userFields], el.userResult, async () => {
    const { name, key } = userArg();
    const a = await api('POST', '/api/v1/admin/unban', key ? { user_key: name } : { user: name });
    S.lastAnswer = a;
    return `Unbanned ${name} (version ${a.version}).`;
  }));

  const switchAct = (fn) => act([el.swFields], el.swResult, fn);
  el.pause.addEventListener('click', () => switchAct(async () => {
    const a = await api('POST', '/api/v1/admin/pause', {});
    S.lastAnswer = a;
    return `Paused (version ${a.version}).`;
  }));
  el.resume.addEventListener('click', () => switchAct(async () => {
    const a = await api('POST', '/api/v1/admin/resume', {});
    S.lastAnswer = a;
    return `Resumed (version ${a.version}).`;
  }));
  el.cooldownS.addEventListener('input', () => { S.touched.cooldown = true; });
  el.setCooldown.addEventListener('click', () => switchAct(async () => {
    const seconds = intOf(el.cooldownS, 'The cooldown');
    const a = await api('POST', '/api/v1/admin/cooldown', { seconds });
    S.lastAnswer = a;
    S.touched.cooldown = false;
    return `Cooldown set to ${seconds} s (version ${a.version}).`;
  }));
  el.endAt.addEventListener('input', () => { S.touched.end = true; });
  el.setEnd.addEventListener('click', () => switchAct(async () => {
    const at = fromLocalInput(el.endAt.value);
    if (at === null) throw local('Choose the date and time of the end first');
    const a = await api('POST', '/api/v1/admin/end', { at_ms: at });
    S.lastAnswer = a;
    S.touched.end = false;
    return `The event ends at ${fmtTime(at)} (version ${a.version}).`;
  }));

  el.auditRefresh.addEventListener('click', () => act([el.auditRefresh], el.auditResult, async () => { await loadAudit(); return ''; }, { refresh: false }));

  // For the tests (and the curious): the page's state, read-only.
  window.placecastAdmin = {
    get signedIn() { return !!S.token; },
    get who() { return S.who; },
    get role() { return S.role; },
    get width() { return S.width; },
    get height() { return S.height; },
    get palette() { return S.palette.slice(); },
    get version() { return S.version; },
    get scale() { return S.scale; },
    get selection() { return S.sel && { ...S.sel }; },
    get preview() { return S.preview && { version: S.preview.version, timeMs: S.preview.timeMs, loading: S.previewLoading }; },
    get previewLoading() { return S.previewLoading || S.previewWant !== null; },
    get pixel() { return S.pixel && { x: S.pixel.x, y: S.pixel.y, loaded: !!S.pixel.data }; },
    get busy() { return S.busy; },
    get loads() { return { ...S.loads }; },
    get refreshing() { return !!refreshing; },
    // The viewport point at the middle of canvas pixel (x, y), after scrolling it into view.
    screenPoint(x, y) {
      const st = el.stage;
      const px = (x + 0.5) * S.scale;
      const py = (y + 0.5) * S.scale;
      if (px < st.scrollLeft || px > st.scrollLeft + st.clientWidth) st.scrollLeft = px - st.clientWidth / 2;
      if (py < st.scrollTop || py > st.scrollTop + st.clientHeight) st.scrollTop = py - st.clientHeight / 2;
      const r = el.view.getBoundingClientRect();
      return { x: r.left + (x + 0.5) * r.width / S.width, y: r.top + (y + 0.5) * r.height / S.height };
    },
  };

  // ---------------------------------------------------------------- start
  setSelection(null);
  let saved = null;
  try { saved = sessionStorage.getItem(TOKEN_KEY); } catch (_) { /* storage off */ }
  if (saved) {
    act([el.signin, el.tokenInput], el.signinResult, async () => {
      try {
        await signIn(saved);
      } catch (err) {
        if (err instanceof ApiError && err.status === 401) {
          try { sessionStorage.removeItem(TOKEN_KEY); } catch (_) { /* storage off */ }
        }
        throw err;
      }
      return '';
    }, { refresh: false });
  } else {
    el.tokenInput.focus();
  }
}());
