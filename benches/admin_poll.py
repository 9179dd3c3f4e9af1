#!/usr/bin/env python3
"""What an open dashboard asks of a broker while lifecycle events come: the first page of the
admin API's clients and of its subscriptions (50 each), every EVERY_MS milliseconds, for
SECONDS seconds. Writes one JSON line to OUT: how many pages were asked, and their answer
times in milliseconds (median, p99, slowest). Loopback only.

    admin_poll.py http://127.0.0.1:PORT EVERY_MS SECONDS OUT
"""
import json
import sys
import time
import urllib.request

PAGES = ("/api/v1/clients?offset=0&limit=50", "/api/v1/subscriptions?offset=0&limit=50")


def main():
    base, every_ms, seconds, out = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
    times = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for path in PAGES:
            started = time.perf_counter()
            with urllib.request.urlopen(base + path, timeout=30) as answer:
                answer.read()
            times.append((time.perf_counter() - started) * 1000)
        time.sleep(every_ms / 1000)  # the dashboard's pace between refreshes, not a wait for state
    times.sort()
    summary = {
        "pages": len(times),
        "every_ms": every_ms,
        "median_ms": round(times[len(times) // 2], 2) if times else None,
        "p99_ms": round(times[min(len(times) - 1, int(len(times) * 0.99))], 2) if times else None,
        "slowest_ms": round(times[-1], 2) if times else None,
    }
    with open(out, "w") as f:
        f.write(json.dumps(summary) + "\n")


if __name__ == "__main__":
    main()
