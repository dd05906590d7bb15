#!/usr/bin/env python3
# usage: bench/ws-ping-after-quiet.py PORT ROUNDS
#
# How long a server takes to answer a WebSocket client's first message after a quiet spell:
# one connection to 127.0.0.1:PORT/ws; each round idles 1.5 s, sends a ping and times the pong.
# Prints the median and the largest. Standard library only, loopback only, bounded by ROUNDS.
import base64, os, socket, struct, sys, time
port, rounds = int(sys.argv[1]), int(sys.argv[2])
s = socket.create_connection(("127.0.0.1", port))
key = base64.b64encode(os.urandom(16)).decode()
s.sendall(f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode())
buf = b""
while b"\r\n\r\n" not in buf:
    buf += s.recv(4096)
assert buf.startswith(b"HTTP/1.1 101"), buf[:80]
buf = buf.split(b"\r\n\r\n", 1)[1]
s.setblocking(True)
def read_frame():
    global buf
    while True:
        if len(buf) >= 2:
            ln = buf[1] & 0x7f; off = 2
            if ln == 126: ln = struct.unpack(">H", buf[2:4])[0]; off = 4
            elif ln == 127: ln = struct.unpack(">Q", buf[2:10])[0]; off = 10
            if len(buf) >= off + ln:
                op, body = buf[0] & 0x0f, buf[off:off+ln]; buf = buf[off+ln:]
                return op, body
        buf += s.recv(65536)
lat = []
for i in range(rounds):
    time.sleep(1.5)
    mask = os.urandom(4); payload = b"q%d" % i
    frame = bytes([0x89, 0x80 | len(payload)]) + mask + bytes(b ^ mask[j % 4] for j, b in enumerate(payload))
    t0 = time.perf_counter(); s.sendall(frame)
    while True:
        op, body = read_frame()
        if op == 0xA and body == payload: break
    lat.append((time.perf_counter() - t0) * 1e3)
lat.sort()
print("pong after 1.5 s quiet, ms: median %.2f  max %.2f  (n=%d)" % (lat[len(lat)//2], lat[-1], len(lat)))
