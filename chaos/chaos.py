#!/usr/bin/env python3
"""The fault run behind scripts/chaos.sh (issue 9: "A fault run you can repeat").

Starts on 127.0.0.1 only: one tansu broker (sqlite storage, kept across its restarts), N placecast
nodes on one single-partition topic, and one node on the embedded file log (its own canvas);
placing clients (HTTP) and reading clients (WebSocket); and, for the set time, seeded random
SIGKILLs and restarts of the nodes and of the broker. Then it stops the faults, lets everything
converge and checks (the exact rules are in the docstring of `check_canvas` and in README.md):

  * every acknowledged placement is on every node's canvas unless a later edit of the same pixel
    replaced it, and sits at its acknowledged version in the log (read back over /ws?since=0);
  * every WebSocket client saw contiguous versions on every connection (reloads only on 4001),
    and its own canvas, built from the snapshot and the batches, equals the node's snapshot;
  * the Kafka nodes (and a fresh node that replays the whole topic) are byte-identical at the
    same version, at least the highest acknowledged version;
  * no placecast process exited by itself or panicked.

tansu 0.6 (sqlite) sometimes panics after a restart and then answers every request with an
error while its process lives on; the run restarts it when its log shows a panic (as a
supervisor would), counts it, and does not count it as a placecast failure.

Standard library only. Every process it starts is started in its own session, written to
RUN/pids while it runs, and killed by its PID (SIGKILL) when the run ends or is interrupted.
"""

import argparse
import array
import base64
import hashlib
import http.client
import json
import os
import random
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections import Counter

HOST = "127.0.0.1"
ANSI = re.compile(r"\x1b\[[0-9;]*m")
TOPIC = "placecast-chaos"
MAX_COLOR = 15  # the default palette has 16 colors; each pixel gets colors 1..15 in order
WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

if sys.byteorder != "little":
    sys.exit("chaos.py reads packed edits as native u32: needs a little-endian machine")


def now():
    return time.monotonic()


def log(msg):
    sys.stdout.write(time.strftime("%H:%M:%S ") + msg + "\n")
    sys.stdout.flush()


class Interrupted(Exception):
    pass


STOP_ALL = threading.Event()  # set on SIGINT/SIGTERM: every loop ends


def sleep(seconds):
    """A sleep that ends early (raising) when the run is interrupted."""
    if STOP_ALL.wait(max(0.0, seconds)):
        raise Interrupted()


# ----------------------------------------------------------------------------- violations


class Findings:
    def __init__(self, quiet=False):
        self.quiet = quiet
        self.lock = threading.Lock()
        self.violations = Counter()
        self.examples = {}
        self.notes = []

    def violation(self, kind, example):
        with self.lock:
            self.violations[kind] += 1
            if kind not in self.examples:
                self.examples[kind] = example
                if not self.quiet:
                    log(f"VIOLATION {kind}: {example}")

    def note(self, msg):
        with self.lock:
            self.notes.append(msg)
        log("note: " + msg)


F = Findings()

# ----------------------------------------------------------------------------- processes


class Registry:
    """RUN/pids: one line per live child ("pid name"), so the shell's trap can kill by PID."""

    def __init__(self, path):
        self.path = path
        self.lock = threading.Lock()
        self.live = {}

    def _write(self):
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            for pid, name in self.live.items():
                f.write(f"{pid} {name}\n")
        os.replace(tmp, self.path)

    def add(self, pid, name):
        with self.lock:
            self.live[pid] = name
            self._write()

    def remove(self, pid):
        with self.lock:
            self.live.pop(pid, None)
            self._write()


class Proc:
    """One restartable child process (a node or the broker)."""

    def __init__(self, name, kind, argv, cwd, logpath, registry, port):
        self.name, self.kind, self.argv, self.cwd = name, kind, argv, cwd
        self.logpath, self.registry, self.port = logpath, registry, port
        self.p = None
        self.lock = threading.RLock()
        self.expected_up = False  # false while we keep it down (or before its first start)
        self.starts = 0
        self.kills = 0
        self.log_start = 0
        self.scan_pos = 0

    def spawn(self):
        with self.lock:
            assert self.p is None
            logf = open(self.logpath, "ab")
            logf.write(f"\n=== chaos: start #{self.starts + 1} at {time.strftime('%H:%M:%S')}\n".encode())
            logf.flush()
            self.log_start = logf.tell()
            self.p = subprocess.Popen(
                self.argv,
                cwd=self.cwd,
                stdin=subprocess.DEVNULL,
                stdout=logf,
                stderr=subprocess.STDOUT,
                env=dict(os.environ, NO_COLOR="1"),
                start_new_session=True,  # a terminal's Ctrl-C reaches only us; we kill by PID
            )
            logf.close()
            self.registry.add(self.p.pid, self.name)
            self.starts += 1

    def kill9(self):
        """SIGKILL by PID and reap. Returns whether it was running."""
        with self.lock:
            self.expected_up = False
            if self.p is None:
                return False
            was_running = self.p.poll() is None
            if was_running:
                try:
                    os.kill(self.p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            self.p.wait()
            self.registry.remove(self.p.pid)
            self.p = None
            return was_running

    def exited(self):
        """The exit status if the process is gone by itself (then reaped), else None."""
        with self.lock:
            if self.p is None:
                return None
            rc = self.p.poll()
            if rc is None:
                return None
            self.registry.remove(self.p.pid)
            self.p = None
            return rc

    def panic_since_start(self):
        """The first panic message its log shows since its last start, or None (reads only what
        was appended since the previous call)."""
        try:
            with open(self.logpath, "rb") as f:
                f.seek(max(self.log_start, self.scan_pos))
                data = f.read(1 << 22)
        except OSError:
            return None
        k = data.find(b"panicked at")
        if k < 0:
            self.scan_pos = max(self.log_start, self.scan_pos) + max(0, len(data) - 64)
            return None
        text = ANSI.sub("", data[max(0, k - 40) : k + 400].decode("utf-8", "replace"))
        return " ".join(l.strip() for l in text.splitlines()[:3])[:300]

    def log_tail(self, n=5):
        try:
            with open(self.logpath, "rb") as f:
                f.seek(0, 2)
                size = f.tell()
                f.seek(max(0, size - 4000))
                lines = ANSI.sub("", f.read().decode("utf-8", "replace")).splitlines()
            return " | ".join(lines[-n:])
        except OSError:
            return ""


def port_listens(port, timeout=0.3):
    try:
        with socket.create_connection((HOST, port), timeout=timeout):
            return True
    except OSError:
        return False


def http_req(port, method, path, body=None, headers=None, timeout=10.0):
    """(status, headers dict lower-case, body bytes). Raises OSError / http.client errors."""
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        r = conn.getresponse()
        data = r.read()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, data
    finally:
        conn.close()


def healthy(port):
    try:
        st, _, body = http_req(port, "GET", "/healthz", timeout=2.0)
        return st == 200
    except (OSError, http.client.HTTPException):
        return False


def pick_ports(n, rng):
    """n free loopback ports below the ephemeral range (10000-65000 here), so that no client's
    outgoing connection can take a node's port while the node is down."""
    ports = []
    candidates = list(range(6000, 9990))
    rng.shuffle(candidates)
    for p in candidates:
        if len(ports) == n:
            break
        s = socket.socket()
        try:
            s.bind((HOST, p))
            ports.append(p)
        except OSError:
            pass
        finally:
            s.close()
    if len(ports) < n:
        sys.exit("no free loopback ports in 6000-9989")
    return ports


# ----------------------------------------------------------------------------- snapshot


HI = bytes((b >> 4) for b in range(256))
LO = bytes((b & 15) for b in range(256))


class Snapshot:
    def __init__(self, version, width, height, raw, pixels):
        self.version, self.width, self.height = version, width, height
        self.raw = raw  # the pixel bytes exactly as served
        self.pixels = pixels  # bytearray, one color per pixel


def fetch_snapshot(port, timeout=30.0):
    st, hdr, body = http_req(port, "GET", "/api/v1/canvas", timeout=timeout)
    if st != 200:
        raise OSError(f"GET /api/v1/canvas answered {st}")
    if body[:4] != b"PCS1" or len(body) < 24:
        raise ValueError("snapshot: bad magic")
    bpp, _pal = body[4], body[5]
    w, h = struct.unpack_from("<II", body, 8)
    (version,) = struct.unpack_from("<Q", body, 16)
    if int(hdr.get("x-canvas-version", "-1")) != version:
        F.violation("snapshot_header_mismatch", f"X-Canvas-Version {hdr.get('x-canvas-version')} != {version}")
    raw = body[24:]
    n = w * h
    if bpp == 8:
        if len(raw) != n:
            raise ValueError("snapshot: bad length")
        pixels = bytearray(raw)
    elif bpp == 4:
        if len(raw) != (n + 1) // 2:
            raise ValueError("snapshot: bad length")
        pixels = bytearray(len(raw) * 2)
        pixels[0::2] = raw.translate(HI)
        pixels[1::2] = raw.translate(LO)
        del pixels[n:]
    else:
        raise ValueError(f"snapshot: bpp {bpp}")
    return Snapshot(version, w, h, raw, pixels)


# ----------------------------------------------------------------------------- WebSocket


class WsClosed(Exception):
    def __init__(self, code):
        self.code = code


class Ws:
    """A minimal RFC 6455 client: masked frames out, pings answered, continuation joined."""

    def __init__(self, port, path, timeout=5.0):
        self.sock = socket.create_connection((HOST, port), timeout=timeout)
        key = base64.b64encode(os.urandom(16))
        req = (
            f"GET {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key.decode()}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        self.sock.sendall(req.encode())
        buf = b""
        while b"\r\n\r\n" not in buf:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise EOFError("closed during the handshake")
            buf += chunk
            if len(buf) > 65536:
                raise ValueError("handshake too long")
        head, rest = buf.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        if status != 101:
            self.sock.close()
            raise ConnectionError(f"upgrade answered {status}")
        accept = base64.b64encode(hashlib.sha1(key + WS_GUID).digest()).decode()
        hdrs = {l.split(":", 1)[0].strip().lower(): l.split(":", 1)[1].strip() for l in lines[1:] if ":" in l}
        if hdrs.get("sec-websocket-accept") != accept:
            raise ValueError("bad Sec-WebSocket-Accept")
        self.buf = bytearray(rest)
        self.frag = None

    def settimeout(self, t):
        self.sock.settimeout(t)

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def _need(self, n):
        while len(self.buf) < n:
            chunk = self.sock.recv(1 << 18)
            if not chunk:
                raise EOFError("connection closed")
            self.buf += chunk

    def _frame(self):
        """One whole frame (re-entrant after a socket timeout: consumes only complete frames)."""
        self._need(2)
        b0, b1 = self.buf[0], self.buf[1]
        ln, off = b1 & 0x7F, 2
        if ln == 126:
            self._need(4)
            (ln,) = struct.unpack_from(">H", self.buf, 2)
            off = 4
        elif ln == 127:
            self._need(10)
            (ln,) = struct.unpack_from(">Q", self.buf, 2)
            off = 10
        if b1 & 0x80:
            raise ValueError("masked frame from the server")
        if ln > 64 << 20:
            raise ValueError(f"frame of {ln} bytes")
        self._need(off + ln)
        payload = bytes(self.buf[off : off + ln])
        del self.buf[: off + ln]
        return b0 >> 7, b0 & 0x0F, payload

    def send(self, opcode, payload=b""):
        mask = os.urandom(4)
        n = len(payload)
        if n < 126:
            head = struct.pack(">BB", 0x80 | opcode, 0x80 | n)
        elif n < 65536:
            head = struct.pack(">BBH", 0x80 | opcode, 0x80 | 126, n)
        else:
            head = struct.pack(">BBQ", 0x80 | opcode, 0x80 | 127, n)
        masked = bytes(b ^ mask[i & 3] for i, b in enumerate(payload))
        self.sock.sendall(head + mask + masked)

    def message(self):
        """(opcode, payload) of the next data message; raises WsClosed(code) on a close frame."""
        while True:
            fin, op, payload = self._frame()
            if op == 0x9:
                self.send(0xA, payload)
                continue
            if op == 0xA:
                continue
            if op == 0x8:
                code = struct.unpack_from(">H", payload)[0] if len(payload) >= 2 else 1005
                try:
                    self.send(0x8, payload[:2])
                except OSError:
                    pass
                raise WsClosed(code)
            if op in (0x1, 0x2):
                if fin:
                    return op, payload
                self.frag = (op, bytearray(payload))
                continue
            if op == 0x0 and self.frag is not None:
                self.frag[1].extend(payload)
                if fin:
                    op0, data = self.frag
                    self.frag = None
                    return op0, bytes(data)
                continue
            raise ValueError(f"unexpected opcode {op}")


def parse_batch(payload):
    """(from, to, edits array('I')) of a batch frame, or raises ValueError."""
    if len(payload) < 24 or payload[0] != 0x01:
        raise ValueError("not a batch frame")
    stride = payload[1]
    frm, to, count = struct.unpack_from("<QQI", payload, 4)
    if stride < 4 or len(payload) != 24 + count * stride or to < frm or count > to - frm:
        raise ValueError(f"malformed batch: stride {stride} from {frm} to {to} count {count} len {len(payload)}")
    edits = array.array("I")
    if stride == 4:
        edits.frombytes(payload[24:])
    else:
        edits.extend(struct.unpack_from("<I", payload, 24 + i * stride)[0] for i in range(count))
    return frm, to, edits


# ----------------------------------------------------------------------------- clients


class Placer(threading.Thread):
    """Places pixels in its own disjoint range [base, base+size) through `ports` (chosen at random
    per request), each pixel getting colors 1, 2, ..., 15 in that order (a color is never sent
    twice for one pixel), so the color on a canvas names the one attempt that wrote it."""

    def __init__(self, name, ports, base, size, seed, token, stop):
        super().__init__(name=name, daemon=True)
        self.ports, self.base, self.size = ports, base, size
        self.rng = random.Random(seed)
        self.token, self.stop = token, stop
        self.used = bytearray(size)  # the last color sent to each pixel (0 = none)
        self.acked = {}  # pixel -> (version, color) of its highest-version acknowledged edit
        self.acked_edits = []  # (version, packed) of every acknowledged placement
        self.maybe = {}  # pixel -> set of colors whose outcome is unknown (may be in the log)
        self.status = Counter()
        self.last_version = 0
        self.full = False

    def pick(self):
        hot = min(256, self.size)
        i = self.rng.randrange(hot) if self.rng.random() < 0.5 else self.rng.randrange(self.size)
        for k in range(self.size):
            j = (i + k) % self.size
            if self.used[j] < MAX_COLOR:
                return j
        return None

    def run(self):
        try:
            self.body()
        except Exception as e:  # a harness bug: say so, do not hang the run
            F.violation("harness_error", f"{self.name}: {e!r}")

    def body(self):
        while not self.stop.is_set() and not STOP_ALL.is_set():
            j = self.pick()
            if j is None:
                self.full = True
                return
            color = self.used[j] + 1
            p = self.base + j
            x, y = p % WIDTH, p // WIDTH
            port = self.rng.choice(self.ports)
            body = json.dumps({"x": x, "y": y, "color": color}).encode()
            conn = http.client.HTTPConnection(HOST, port, timeout=20.0)
            try:
                conn.connect()
            except OSError:
                self.status["not_connected"] += 1  # nothing was sent: the color is still free
                conn.close()
                STOP_ALL.wait(0.05)
                continue
            try:
                conn.request("POST", "/api/v1/place", body=body, headers={"Authorization": "Bearer " + self.token,
                                                                           "Content-Type": "application/json"})
                r = conn.getresponse()
                st, data = r.status, r.read()
            except (OSError, http.client.HTTPException):
                st, data = None, b""
            finally:
                conn.close()
            if st == 200:
                v = json.loads(data)["version"]
                if v <= self.last_version:
                    F.violation("ack_versions_not_increasing", f"{self.name}: version {v} after {self.last_version}")
                self.last_version = max(self.last_version, v)
                self.used[j] = color
                self.acked[p] = (v, color)
                self.acked_edits.append((v, (p << 5) | color))
                self.status["200"] += 1
            elif st in (400, 401, 403, 413, 429):
                # Refused: nothing was placed (cooldown and rate limits are off, so these are odd).
                self.status[str(st)] += 1
                F.violation("placement_refused", f"{self.name} via :{port}: {st} {data[:200]!r}")
                STOP_ALL.wait(0.2)
            else:
                # 503 (the log did not acknowledge: usually not written, but may be), 504
                # (verdict_pending: in the log), a reset connection or a timeout: unknown.
                self.used[j] = color
                self.maybe.setdefault(p, set()).add(color)
                self.status[str(st) if st else "no_answer"] += 1
                STOP_ALL.wait(0.2 if st == 503 else 0.05)


class Reader(threading.Thread):
    """Follows one node: snapshot, then /ws?since=V; checks every batch's `from` against its
    version, applies the edits to its own canvas, reconnects with since=<its version> after a
    disconnect, and reloads the snapshot on 4001 (counted)."""

    def __init__(self, name, node, stop):
        super().__init__(name=name, daemon=True)
        self.node, self.stop = node, stop
        self.canvas = None
        self.version = None
        self.stats = Counter()
        self.closes = Counter()
        self.connected = False

    def reload(self):
        while not self.stop.is_set() and not STOP_ALL.is_set():
            try:
                s = fetch_snapshot(self.node.port)
                self.canvas, self.version = s.pixels, s.version
                return True
            except (OSError, ValueError, http.client.HTTPException):
                STOP_ALL.wait(0.3)
        return False

    def run(self):
        try:
            self.body()
        except Exception as e:  # a harness bug: say so, do not hang the run
            F.violation("harness_error", f"{self.name}: {e!r}")

    def body(self):
        if not self.reload():
            return
        backoff = 0.1
        while not self.stop.is_set() and not STOP_ALL.is_set():
            try:
                ws = Ws(self.node.port, f"/ws?since={self.version}")
            except (OSError, EOFError, ValueError, ConnectionError):
                STOP_ALL.wait(backoff)
                backoff = min(1.0, backoff * 2)
                continue
            backoff = 0.1
            self.stats["connections"] += 1
            self.connected = True
            ws.settimeout(0.5)
            need_reload = False
            try:
                while not self.stop.is_set() and not STOP_ALL.is_set():
                    try:
                        op, payload = ws.message()
                    except socket.timeout:
                        continue
                    if op == 0x1:
                        msg = json.loads(payload)
                        self.stats["text_" + str(msg.get("type"))] += 1
                        continue
                    frm, to, edits = parse_batch(payload)
                    if frm != self.version:
                        F.violation("ws_gap", f"{self.name} on {self.node.name}: batch from {frm} at version {self.version}")
                        self.stats["gaps"] += 1
                        need_reload = True
                        break
                    canvas = self.canvas
                    n = len(canvas)
                    for e in edits:
                        i = e >> 5
                        if i >= n or (e & 31) > MAX_COLOR:
                            F.violation("ws_bad_edit", f"{self.name}: edit {e:#x}")
                            continue
                        canvas[i] = e & 31
                    self.version = to
                    self.stats["batches"] += 1
                    self.stats["edits"] += len(edits)
            except WsClosed as c:
                self.closes[c.code] += 1
                if c.code == 4001:
                    self.stats["reloads"] += 1
                    need_reload = True
                elif c.code == 1008:
                    F.violation("ws_since_ahead", f"{self.name} on {self.node.name}: since={self.version} is ahead of the node (1008)")
                    need_reload = True
                else:
                    self.stats["reconnects"] += 1
            except (OSError, EOFError):
                self.closes["dropped"] += 1
                self.stats["reconnects"] += 1
            except ValueError as e:
                F.violation("ws_protocol", f"{self.name} on {self.node.name}: {e}")
                need_reload = True
            finally:
                self.connected = False
                ws.close()
            if need_reload and not self.stop.is_set():
                self.reload()


def read_log(port, head, timeout):
    """The whole log (0, head] of a node over /ws?since=0: list of (from, to, edits)."""
    ws = Ws(port, "/ws?since=0", timeout=10.0)
    ws.settimeout(2.0)
    batches, at = [], 0
    deadline = now() + timeout
    try:
        while at < head:
            if now() > deadline:
                raise TimeoutError(f"log read reached {at} of {head}")
            try:
                op, payload = ws.message()
            except socket.timeout:
                continue
            if op != 0x2:
                continue
            frm, to, edits = parse_batch(payload)
            if frm != at:
                raise ValueError(f"log read: batch from {frm} at {at}")
            batches.append((frm, to, edits))
            at = to
    finally:
        ws.close()
    return batches


# ----------------------------------------------------------------------------- checks


def index_log(batches, n_pixels):
    """From a log: the canvas it makes, and for each packed edit (pixel, color) its position in
    the edit sequence and its exact version (None when the batch has no-op versions, then only
    `from < version <= to` is known)."""
    canvas = bytearray(n_pixels)
    where = {}  # packed -> (position, version or None, from, to)
    last_pos = {}  # pixel -> position of its last write
    dups = 0
    pos = 0
    for frm, to, edits in batches:
        exact = len(edits) == to - frm
        for k, e in enumerate(edits):
            p = e >> 5
            canvas[p] = e & 31
            if e in where:
                dups += 1
            where[e] = (pos, frm + 1 + k if exact else None, frm, to)
            last_pos[p] = pos
            pos += 1
    return canvas, where, last_pos, dups


def check_canvas(label, pixels, placers, n_pixels, logidx=None):
    """The acknowledged-placement check for one canvas. For every pixel p of a placer's range,
    with c = the canvas's color at p:

      * if p has acknowledged edits, let (V, a) be the one with the highest version. OK iff
          c == a, or
          c is the color of an attempt on p whose answer was lost (503/504/reset/timeout) and
            c > a: colors go up per pixel, so that attempt was sent after the client received
            V's acknowledgement, and its version (if it is in the log at all) is > V; or
          the node's own log (read over /ws?since=0) shows the write of color c at p after the
            acknowledged edit (a later edit of an unacknowledged attempt, whatever its color).
        Otherwise the acknowledged edit is LOST.
      * if p has none: c == 0 or c is the color of an attempt with an unknown outcome; else it is
        a PHANTOM (a color nobody placed, or one the server refused).
    Pixels outside every placer's range must be 0. Returns the number of lost edits."""
    lost = 0
    in_range = bytearray(n_pixels)
    for pl in placers:
        in_range[pl.base : pl.base + pl.size] = b"\x01" * pl.size
        for j in range(pl.size):
            p = pl.base + j
            c = pixels[p]
            ack = pl.acked.get(p)
            maybe = pl.maybe.get(p, ())
            if ack is not None:
                v, a = ack
                if c == a or (c in maybe and c > a):
                    continue
                if logidx is not None:
                    where = logidx[1]
                    wa, wc = where.get((p << 5) | a), where.get((p << 5) | c)
                    if wa is not None and wc is not None and wc[0] > wa[0] and c != 0:
                        continue
                lost += 1
                F.violation("lost_acknowledged", f"{label}: pixel {p} ({p % WIDTH},{p // WIDTH}) acknowledged color {a} at version {v}, canvas has {c}")
            elif c != 0 and c not in maybe:
                F.violation("phantom_pixel", f"{label}: pixel {p} has color {c}, never placed with an unknown or good outcome")
    # Everything outside the placers' ranges is untouched.
    outside = [p for p in range(n_pixels) if pixels[p] and not in_range[p]] if any(pixels) else []
    for p in outside[:1]:
        F.violation("phantom_pixel", f"{label}: pixel {p} outside every placer's range has color {pixels[p]}")
    return lost


def check_log(label, batches, placers, head, n_pixels):
    """Every acknowledged placement is in the log at its version; the log is contiguous; no edit
    appears twice (each (pixel, color) is sent once). Returns (index, edits missing from the log,
    edits acknowledged with a version other than the one they have in the log)."""
    idx = index_log(batches, n_pixels)
    canvas, where, _last, dups = idx
    if dups:
        F.violation("duplicate_in_log", f"{label}: {dups} edits appear more than once in the log")
    lost = wrong = 0
    for pl in placers:
        for v, e in pl.acked_edits:
            w = where.get(e)
            if w is None:
                lost += 1
                F.violation("acknowledged_not_in_log", f"{label}: pixel {e >> 5} color {e & 31} acknowledged at {v}, absent from the log (0, {head}]")
            elif (w[1] is not None and w[1] != v) or not (w[2] < v <= w[3]):
                wrong += 1
                F.violation("acknowledged_at_wrong_version", f"{label}: pixel {e >> 5} color {e & 31} acknowledged at {v}, in the log at {w[1] or (w[2], w[3])}")
    return idx, lost, wrong


def self_test(placers, pixels, n_pixels, batches):
    """The checks must be able to fail: on copies, erase one acknowledged pixel from the canvas
    and one acknowledged edit from the log; each must add exactly one loss to what the real data
    gives."""
    global F
    saved, F = F, Findings(quiet=True)
    try:
        base_canvas = check_canvas("self-test", pixels, placers, n_pixels, None)
        where = None
        if batches is not None:
            (_c, where, _l, _d), base_log, _w = check_log("self-test", batches, placers, 0, n_pixels)
        victim = None
        for pl in placers:
            for p, (v, a) in pl.acked.items():
                e = (p << 5) | a
                if pixels[p] == a and (where is None or (e in where and where[e][2] < v <= where[e][3])):
                    victim = (p, v, a)
                    break
            if victim:
                break
        if victim is None:
            return None
        p, v, a = victim
        canvas = bytearray(pixels)
        canvas[p] = 0
        ok = check_canvas("self-test", canvas, placers, n_pixels, None) == base_canvas + 1
        if batches is not None:
            forged = []
            for frm, to, edits in batches:
                if frm < v <= to:
                    edits = array.array("I", (x if x != (p << 5) | a else (p << 5) for x in edits))
                forged.append((frm, to, edits))
            _, lost_log, _w = check_log("self-test", forged, placers, 0, n_pixels)
            ok = ok and lost_log == base_log + 1
        return ok
    finally:
        F = saved


# ----------------------------------------------------------------------------- the run


WIDTH = HEIGHT = 1000


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=2.0)
    ap.add_argument("--seed", type=int, required=True)
    ap.add_argument("--run-dir", required=True)
    ap.add_argument("--placecast", required=True)
    ap.add_argument("--tansu", required=True)
    ap.add_argument("--kafka-nodes", type=int, default=3)
    ap.add_argument("--placers", type=int, default=4, help="placing clients on the Kafka nodes")
    ap.add_argument("--file-placers", type=int, default=1, help="placing clients on the file-log node")
    ap.add_argument("--readers", type=int, default=20, help="WebSocket readers, spread over all nodes")
    ap.add_argument("--range", type=int, default=16384, help="pixels per placing client on the Kafka nodes")
    ap.add_argument("--file-range", type=int, default=262144, help="pixels per placing client on the file-log node")
    ap.add_argument("--shards", type=int, default=2)
    args = ap.parse_args()

    if args.minutes <= 0 or args.minutes > 24 * 60:
        sys.exit("--minutes must be in (0, 1440]")
    n_pixels = WIDTH * HEIGHT
    if args.placers * args.range > n_pixels or args.file_placers * args.file_range > n_pixels:
        sys.exit("placers x range exceeds the canvas")

    def on_signal(signum, _frame):
        STOP_ALL.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGHUP, on_signal)

    run = os.path.abspath(args.run_dir)
    reg = Registry(os.path.join(run, "pids"))
    chaos_rng = random.Random(args.seed)
    ports = pick_ports(args.kafka_nodes + 3, random.Random(args.seed ^ 0x5EED))
    bport, node_ports, fport, ref_port = ports[0], ports[1 : 1 + args.kafka_nodes], ports[-2], ports[-1]
    secret = hashlib.sha256(f"placecast chaos run {args.seed}".encode()).hexdigest()
    broker_url = f"tcp://{HOST}:{bport}"
    common = [
        "--secret", secret, "--cooldown", "0", "--max-conns-per-addr", "0", "--sessions-per-min", "0",
        "--placements-per-addr-per-min", "0", "--drain-grace-ms", "0", "--shards", str(args.shards),
        "--width", str(WIDTH), "--height", str(HEIGHT),
    ]
    kafka_flags = ["--kafka-brokers", f"{HOST}:{bport}", "--kafka-topic", TOPIC, "--kafka-timeout-ms", "2000",
                   "--checkpoint-secs", "5"]

    os.makedirs(os.path.join(run, "broker"), exist_ok=True)
    broker = Proc("broker", "broker",
                  [args.tansu, "broker", "--listener-url", broker_url, "--advertised-listener-url", broker_url,
                   "--storage-engine", "sqlite://tansu.db"],
                  os.path.join(run, "broker"), os.path.join(run, "broker.log"), reg, bport)

    def node_proc(name, port, extra):
        d = os.path.join(run, name)
        os.makedirs(d, exist_ok=True)
        return Proc(name, "node", [args.placecast, "serve", "--listen", f"{HOST}:{port}", "--data-dir", d] + common + extra,
                    d, os.path.join(run, name + ".log"), reg, port)

    knodes = [node_proc(f"kafka{i}", p, kafka_flags) for i, p in enumerate(node_ports)]
    fnode = node_proc("file", fport, [])
    everything = [broker] + knodes + [fnode]
    counters = Counter()
    stop_clients = threading.Event()
    placers, fplacers, readers = [], [], []
    t0 = now()
    rc = 1

    def start_broker():
        for attempt in range(5):
            broker.spawn()
            deadline = now() + 20
            while now() < deadline:
                if broker.exited() is not None:
                    break
                if port_listens(bport):
                    broker.expected_up = True
                    return
                sleep(0.05)
            F.note(f"broker start #{broker.starts} did not listen ({broker.log_tail(2)}); retrying")
            broker.kill9()
            sleep(1)
        raise RuntimeError("the broker did not start in 5 attempts")

    act = threading.RLock()  # held while killing or starting processes (the faults, the monitor)

    def fix_broker():
        """tansu 0.6's sqlite storage can panic after a restart ("more or less than one row" in
        idempotent_message_check): the process lives on but answers every request with an error.
        Like a supervisor, restart it (not counted as a fault we injected; reported)."""
        with act:
            if broker.p is None or not broker.expected_up:
                return False
            why = broker.panic_since_start()
            if why is None:
                return False
            counters["broker_panics"] += 1
            F.note(f"tansu panicked (start #{broker.starts}); restarting it: {why}")
            broker.kill9()
            start_broker()
            return True

    def start_node(n, timeout=180):
        for attempt in range(6):
            n.spawn()
            deadline = now() + timeout
            while now() < deadline:
                rcode = n.exited()
                if rcode is not None:
                    counters["node_start_failures"] += 1
                    F.note(f"{n.name} exited with {rcode} while starting: {n.log_tail(1)[:300]}")
                    fix_broker()
                    break
                if healthy(n.port):
                    n.expected_up = True
                    return
                if n.kind == "node" and n is not fnode:
                    fix_broker()  # a Kafka node replays only from a broker that answers
                sleep(0.1)
            else:
                F.violation("node_start_timeout", f"{n.name} not healthy within {timeout} s: {n.log_tail(2)}")
            n.kill9()
            sleep(1)
        raise RuntimeError(f"{n.name} did not start in 6 attempts")

    def session(port):
        deadline = now() + 60
        while now() < deadline:
            try:
                st, _, body = http_req(port, "POST", "/api/v1/session", body=b"{}")
                if st == 200:
                    return json.loads(body)["token"]
            except (OSError, http.client.HTTPException):
                pass
            sleep(0.2)
        raise RuntimeError(f"no session from :{port}")

    try:
        # --- start
        log(f"run dir {run}; broker :{bport}, kafka nodes {node_ports}, file node :{fport}; seed {args.seed}")
        start_broker()
        out = subprocess.run([args.tansu, "topic", "create", TOPIC, "--partitions", "1", "--broker", broker_url],
                             capture_output=True, timeout=60)
        if out.returncode != 0:
            raise RuntimeError(f"tansu topic create failed: {out.stderr.decode(errors='replace')}")
        for n in knodes + [fnode]:
            start_node(n)
        log("all nodes up; starting clients")

        kports = [n.port for n in knodes]
        for i in range(args.placers):
            placers.append(Placer(f"placer{i}", kports, i * args.range, args.range, args.seed * 1000 + i,
                                  session(kports[i % len(kports)]), stop_clients))
        for i in range(args.file_placers):
            fplacers.append(Placer(f"fplacer{i}", [fport], i * args.file_range, args.file_range, args.seed * 1000 + 500 + i,
                                   session(fport), stop_clients))
        all_nodes = knodes + [fnode]
        for i in range(args.readers):
            readers.append(Reader(f"reader{i}", all_nodes[i % len(all_nodes)], stop_clients))
        for t in placers + fplacers + readers:
            t.start()

        # --- faults
        chaos_end = now() + args.minutes * 60
        mon_stop = threading.Event()

        def monitor():
            # A process that exits while it should be up crashed: record it; restart it.
            while not mon_stop.wait(0.5) and not STOP_ALL.is_set():
                if act.acquire(blocking=False):
                    try:
                        fix_broker()
                    except Exception as e:
                        F.violation("harness_error", f"monitor: {e!r}")
                    finally:
                        act.release()
                for pr in everything:
                    with pr.lock:
                        if not pr.expected_up:
                            continue
                        rcode = pr.exited()
                        if rcode is None:
                            continue
                        pr.expected_up = False
                    F.violation(f"{pr.kind}_exited_by_itself", f"{pr.name} exited with {rcode}: {pr.log_tail(3)}")
                    counters[f"{pr.kind}_crashes"] += 1

        mon = threading.Thread(target=monitor, name="monitor", daemon=True)
        mon.start()

        def kill(pr):
            if pr.kill9():
                pr.kills += 1
                counters["kills_" + ("broker" if pr is broker else "file_node" if pr is fnode else "kafka_node")] += 1

        def bring_up_all():
            # The broker first: a Kafka node refuses to start without it (by design).
            with broker.lock:
                down = broker.p is None
            if down:
                start_broker()
            for n in knodes + [fnode]:
                with n.lock:
                    down = n.p is None
                if down:
                    if chaos_rng.random() < 0.15 and now() < chaos_end:
                        # Kill it again in the middle of its start (replay, checkpoint load).
                        n.spawn()
                        sleep(chaos_rng.uniform(0.0, 0.6))
                        kill(n)
                        counters["kills_during_start"] += 1
                    start_node(n)

        kinds = ["kafka_node", "file_node", "broker", "two_kafka_nodes", "broker_and_kafka_node", "everything"]
        weights = [40, 15, 20, 10, 10, 5]
        events = Counter()
        while now() < chaos_end and not STOP_ALL.is_set():
            sleep(chaos_rng.uniform(2.0, 10.0))
            if now() >= chaos_end:
                break
            kind = chaos_rng.choices(kinds, weights)[0]
            events[kind] += 1
            victims = {
                "kafka_node": lambda: [chaos_rng.choice(knodes)],
                "file_node": lambda: [fnode],
                "broker": lambda: [broker],
                "two_kafka_nodes": lambda: chaos_rng.sample(knodes, min(2, len(knodes))),
                "broker_and_kafka_node": lambda: [broker, chaos_rng.choice(knodes)],
                "everything": lambda: list(everything),
            }[kind]()
            down_for = chaos_rng.uniform(0.1, 5.0)
            log(f"[{now() - t0:6.1f}s] kill -9 {' '.join(v.name for v in victims)}; down {down_for:.1f} s "
                f"(acknowledged so far: {sum(p.status['200'] for p in placers)} kafka, {sum(p.status['200'] for p in fplacers)} file)")
            with act:
                for v in victims:
                    kill(v)
            sleep(down_for)
            with act:
                bring_up_all()
        mon_stop.set()
        mon.join()
        fix_broker()
        bring_up_all()
        for pr in everything:
            if pr.exited() is not None or pr.p is None:
                F.violation("down_at_end", f"{pr.name} is not running at the end of the faults")
        chaos_secs = now() - t0
        log(f"faults over after {chaos_secs:.0f} s ({dict(events)}); stopping the placing clients")

        # --- converge
        stop_placers = threading.Event()
        for p in placers + fplacers:
            p.stop = stop_placers
        stop_placers.set()
        for p in placers + fplacers:
            p.join(30)
            if p.is_alive():
                F.violation("client_hung", f"{p.name} did not stop")
        head = max([p.last_version for p in placers] + [0])
        fhead = max([p.last_version for p in fplacers] + [0])

        def versions(nodes):
            out = []
            for n in nodes:
                try:
                    st, _, body = http_req(n.port, "GET", "/healthz", timeout=5)
                    out.append(json.loads(body)["version"])
                except (OSError, ValueError, KeyError, http.client.HTTPException):
                    out.append(None)
            return out

        deadline, stable, last = now() + 180, 0, None
        while True:
            fix_broker()
            vs = versions(knodes)
            if None not in vs and len(set(vs)) == 1 and vs[0] >= head:
                stable = stable + 1 if vs == last else 1
                if stable >= 3:
                    break
            else:
                stable = 0
            last = vs
            if now() > deadline:
                F.violation("no_convergence", f"kafka nodes at versions {vs}, highest acknowledged {head}")
                break
            sleep(0.5)
        kversion = vs[0]
        fversion = versions([fnode])[0]
        if fversion is None or fversion < fhead:
            F.violation("file_node_behind", f"file node at {fversion}, highest acknowledged {fhead}")
        log(f"converged: kafka nodes at {vs} (highest acknowledged {head}); file node at {fversion} (highest acknowledged {fhead})")

        # Readers reach their node's final version.
        target = {n.name: v for n, v in zip(knodes + [fnode], vs + [fversion])}
        deadline = now() + 120
        while any(r.is_alive() and r.version != target[r.node.name] for r in readers) and now() < deadline:
            sleep(0.2)
        for r in readers:
            if r.version != target[r.node.name]:
                F.violation("reader_behind", f"{r.name} on {r.node.name} at {r.version}, node at {target[r.node.name]}")
        stop_clients.set()
        for r in readers:
            r.join(10)

        # --- check: snapshots
        snaps = {}
        for n in knodes + [fnode]:
            snaps[n.name] = fetch_snapshot(n.port)
        ks = [snaps[n.name] for n in knodes]
        identical = all(s.version == ks[0].version and s.raw == ks[0].raw for s in ks)
        if not identical:
            F.violation("kafka_nodes_differ", f"versions {[s.version for s in ks]}; "
                        f"differing pixels vs kafka0: {[sum(a != b for a, b in zip(s.pixels, ks[0].pixels)) for s in ks]}")
        for r in readers:
            s = snaps[r.node.name]
            if r.canvas is not None and r.version == s.version and r.canvas != s.pixels:
                diff = sum(a != b for a, b in zip(r.canvas, s.pixels))
                F.violation("reader_canvas_differs", f"{r.name} on {r.node.name}: {diff} pixels differ from the snapshot at {s.version}")

        # --- check: a fresh node replays the whole topic; the log itself, read back from it
        ref = node_proc("kafka-fresh", ref_port, kafka_flags)
        everything.append(ref)
        t_ref = now()
        start_node(ref, timeout=600)
        ref_replay_s = now() - t_ref
        rs = fetch_snapshot(ref.port)
        if rs.version != ks[0].version or rs.raw != ks[0].raw:
            F.violation("fresh_node_differs", f"fresh node at {rs.version}, nodes at {ks[0].version}")
        lost_log = wrong_log = wrong_flog = 0
        kidx = kb = None
        try:
            kb = read_log(ref.port, rs.version, timeout=300)
            kidx, lost_log, wrong_log = check_log("kafka log", kb, placers, rs.version, n_pixels)
            if kidx[0] != rs.pixels:
                F.violation("log_replay_differs", "the canvas built from the log differs from the fresh node's snapshot")
        except (OSError, EOFError, ValueError, TimeoutError, ConnectionError, WsClosed) as e:
            F.violation("log_read_failed", f"kafka log over /ws?since=0: {e!r}")
        fidx = None
        lost_flog = 0
        try:
            fb = read_log(fnode.port, snaps["file"].version, timeout=300)
            fidx, lost_flog, wrong_flog = check_log("file log", fb, fplacers, snaps["file"].version, n_pixels)
            if fidx[0] != snaps["file"].pixels:
                F.violation("log_replay_differs", "the file node's log differs from its snapshot")
        except (OSError, EOFError, ValueError, TimeoutError, ConnectionError, WsClosed) as e:
            F.violation("log_read_failed", f"file log over /ws?since=0: {e!r}")

        # --- check: acknowledged placements on every canvas
        lost = 0
        for n in knodes:
            lost = max(lost, check_canvas(n.name, snaps[n.name].pixels, placers, n_pixels, kidx))
        lost = max(lost, check_canvas("kafka-fresh", rs.pixels, placers, n_pixels, kidx))
        flost = check_canvas("file", snaps["file"].pixels, fplacers, n_pixels, fidx)
        selftest = self_test(placers, ks[0].pixels, n_pixels, kb)
        if selftest is False:
            F.violation("checker_self_test", "an erased acknowledged pixel or log entry was not reported as lost")

        # --- panics in any log
        for pr in everything:
            try:
                with open(pr.logpath, "rb") as f:
                    text = f.read().decode("utf-8", "replace")
            except OSError:
                continue
            for line in text.splitlines():
                if "panicked" in line:
                    if pr.kind == "node":
                        F.violation("placecast_panicked", f"{pr.name}: {line[:300]}")
                    else:
                        F.note(f"{pr.name} log: {line[:300]}")
                    break

        # --- summary
        def total(ps, key):
            return sum(p.status[key] for p in ps)

        rstats, rcloses = Counter(), Counter()
        for r in readers:
            rstats.update(r.stats)
            rcloses.update(r.closes)
        unknown_k = sum(sum(len(s) for s in p.maybe.values()) for p in placers)
        unknown_f = sum(sum(len(s) for s in p.maybe.values()) for p in fplacers)
        lines = [
            "",
            "==== placecast chaos summary ====",
            f"seed {args.seed}, faults for {chaos_secs:.0f} s, {args.kafka_nodes} kafka nodes + 1 file-log node, "
            f"{args.placers}+{args.file_placers} placing clients, {args.readers} WebSocket readers",
            f"acknowledged: {total(placers, '200')} on the kafka topic (final version {ks[0].version}), "
            f"{total(fplacers, '200')} on the file-log node (final version {snaps['file'].version})",
            f"unknown outcome (503/504/reset/timeout, may or may not be in the log): {unknown_k} kafka, {unknown_f} file; "
            f"answers: kafka {dict(sum((p.status for p in placers), Counter()))}, file {dict(sum((p.status for p in fplacers), Counter()))}",
            f"lost: {lost + lost_log + flost + lost_flog} (kafka canvases {lost}, kafka log {lost_log}, file canvas {flost}, file log {lost_flog}); "
            f"acknowledged with a version other than their place in the log: {wrong_log} kafka, {wrong_flog} file",
            f"kills survived: kafka nodes {counters['kills_kafka_node']}, file node {counters['kills_file_node']}, "
            f"broker {counters['kills_broker']} (of them during a node's start-up: {counters['kills_during_start']}); "
            f"node start failures {counters['node_start_failures']}; tansu panics (restarted by the harness) {counters['broker_panics']}",
            f"readers: {rstats['batches']} batches, {rstats['edits']} edits applied, {rstats['connections']} connections, "
            f"reconnects {rstats['reconnects']}, reloads (4001) {rstats['reloads']}, gaps {rstats['gaps']}, "
            f"closes {dict(sorted(rcloses.items(), key=str))}",
            f"canvases: kafka nodes byte-identical at {ks[0].version}: {'yes' if identical else 'NO'}; "
            f"fresh node replayed the topic in {ref_replay_s:.1f} s and matches: {'yes' if rs.raw == ks[0].raw else 'NO'}; "
            f"every reader's canvas equals its node's snapshot: {'yes' if not F.violations['reader_canvas_differs'] else 'NO'}",
            f"checker self-test (one erased acknowledged pixel and log entry are each reported as 1 lost): "
            f"{ {True: 'passed', False: 'FAILED', None: 'skipped (nothing acknowledged)'}[selftest] }",
        ]
        if any(p.full for p in placers + fplacers):
            lines.append("note: some placing client used every color of its range and stopped early (raise --range)")
        if F.violations:
            lines.append(f"VIOLATIONS: {dict(F.violations)}")
            for k, ex in F.examples.items():
                lines.append(f"  {k}: {ex}")
        else:
            lines.append("violations: none")
        print("\n".join(lines), flush=True)
        with open(os.path.join(run, "summary.txt"), "w") as f:
            f.write("\n".join(lines) + "\n")
        rc = 1 if F.violations else 0
    except Interrupted:
        log("interrupted: stopping every process")
        rc = 130
    except Exception as e:  # a broken harness must not leave processes behind
        log(f"chaos run failed: {e!r}")
        rc = 2
    finally:
        stop_clients.set()
        STOP_ALL.set()
        for pr in everything:
            pr.kill9()
    return rc


if __name__ == "__main__":
    sys.exit(main())
