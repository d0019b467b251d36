"""POST a given list of requests with keep-alive connections from many threads, each one once.

    python -m bench.poster SPEC.json

SPEC: ``{"url": ..., "concurrency": n, "requests": [{"headers": {...}, "body": "..."}, ...]}``.
Prints ``first_at`` on a line of its own as it starts, then JSON: ``first_at`` (time.monotonic()
as the first request was sent; the clock is the machine's, shared with other processes),
``last_at`` (the last answer), ``ok`` (2xx), ``non_2xx`` and ``retried`` (requests sent again
after a dropped connection, as an ESP would). A request answered other than 2xx is not retried:
it is counted. It runs as a process of its own, so that its threads do not share an interpreter
lock with the emulators of the benchmark that starts it.
"""

from __future__ import annotations

import http.client
import json
import sys
import threading
import time
from typing import Any
from urllib.parse import urlsplit


def post_all(
    url: str, items: list[tuple[dict[str, str], bytes]], concurrency: int
) -> dict[str, Any]:
    parts = urlsplit(url)
    host, port, path = parts.hostname or "127.0.0.1", parts.port or 80, parts.path
    lock = threading.Lock()
    pending = iter(items)
    totals = {"ok": 0, "non_2xx": 0, "retried": 0}
    times: list[float] = []

    def run() -> None:
        conn = http.client.HTTPConnection(host, port, timeout=60)
        ok = bad = retried = 0
        last = 0.0
        while True:
            with lock:
                item = next(pending, None)
            if item is None:
                break
            headers, body = item
            for attempt in range(5):
                try:
                    all_headers = {"Content-Type": "application/json", **headers}
                    conn.request("POST", path, body, all_headers)
                    response = conn.getresponse()
                    response.read()
                    break
                except (OSError, http.client.HTTPException):
                    conn.close()
                    conn = http.client.HTTPConnection(host, port, timeout=60)
                    retried += 1
                    if attempt == 4:
                        raise
            last = time.monotonic()
            if 200 <= response.status < 300:
                ok += 1
            else:
                bad += 1
        conn.close()
        with lock:
            totals["ok"] += ok
            totals["non_2xx"] += bad
            totals["retried"] += retried
            times.append(last)

    threads = [threading.Thread(target=run) for _ in range(concurrency)]
    first = time.monotonic()
    print(first, flush=True)  # the first line: whoever waits on the posts may start its clock
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return {"first_at": first, "last_at": max(times), **totals}


def main() -> None:
    with open(sys.argv[1], "rb") as spec_file:
        spec = json.load(spec_file)
    items = [(r["headers"], r["body"].encode()) for r in spec["requests"]]
    print(json.dumps(post_all(spec["url"], items, spec["concurrency"])))


if __name__ == "__main__":
    main()
