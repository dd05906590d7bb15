#!/usr/bin/env python3
"""Open-loop keep-alive GETs for the per-request cost of a server's event loop (RESULTS.md,
"The commit window's default": a bare GET against placecast and the tokio baseline).

usage: get-load.py PORT PATH RATE SECONDS CONNS

Targets 127.0.0.1 only; RATE requests/s spread over CONNS keep-alive connections, each on its own
schedule (a late request is sent at once, never skipped), for SECONDS, then stops. Prints the
number of requests answered. Deliberately plain Python: at 1,000/s it costs the tester CPU, not
the server, and the measured figure is the server thread's CPU per request.
"""
import http.client
import sys
import threading
import time


def main() -> None:
    port, path = int(sys.argv[1]), sys.argv[2]
    rate, secs, conns = float(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5])
    if not (0 < rate <= 20_000 and 0 < secs <= 600 and 0 < conns <= 256):
        sys.exit("rate 1-20000/s, 1-600 s, 1-256 connections")
    done = [0]
    lock = threading.Lock()

    def run(i: int) -> None:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        gap = conns / rate
        t = time.monotonic() + i * gap / conns
        end = time.monotonic() + secs
        n = 0
        while t < end:
            d = t - time.monotonic()
            if d > 0:
                time.sleep(d)
            c.request("GET", path)
            c.getresponse().read()
            n += 1
            t += gap
        with lock:
            done[0] += n

    threads = [threading.Thread(target=run, args=(i,)) for i in range(conns)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(done[0])


if __name__ == "__main__":
    main()
