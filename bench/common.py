"""Shared pieces of the benchmarks: process start-up with readiness waits, wrk runs."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

from syncworker.devkit.supervisor import cpu_seconds

ROOT = Path(__file__).resolve().parent.parent


def wait_http(url: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            requests.get(url, timeout=0.5)
            return
        except requests.RequestException:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{url} did not answer in {timeout}s") from None
            time.sleep(0.05)


def gunicorn(
    app: str,
    port: int,
    workers: int,
    threads: int,
    env: dict[str, str],
    worker_class: str = "gthread",
) -> subprocess.Popen[bytes]:
    """``app`` under gunicorn with syncworker's production config (``worker_class`` aside)."""
    args = [
        sys.executable, "-m", "gunicorn", "--config", "python:syncworker.web.gunicorn_config",
        "--worker-class", worker_class, "--log-level", "warning", app,
    ]  # fmt: skip
    settings = {
        "SYNCWORKER_BIND": f"127.0.0.1:{port}",
        "WEB_CONCURRENCY": str(workers),
        "WEB_THREADS": str(threads),
    }
    proc = subprocess.Popen(args, cwd=ROOT, env={**os.environ, **env, **settings})
    wait_http(f"http://127.0.0.1:{port}/")
    return proc


process_cpu_seconds = cpu_seconds  # pids and every process below them (Linux /proc)


def wait_idle(pids: list[int], timeout: float = 60.0, busy: float = 0.05) -> float:
    """Wait until ``pids`` (and their children) use less than ``busy`` of a core over 0.3 s, so
    that work left from one round (requests wrk sent before it stopped) does not slow the next.
    Returns the seconds waited."""
    start = time.monotonic()
    while True:
        before = process_cpu_seconds(pids)
        time.sleep(0.3)
        if process_cpu_seconds(pids) - before < busy * 0.3 or time.monotonic() - start > timeout:
            return time.monotonic() - start


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def found(pattern: str, text: str) -> re.Match[str]:
    """The first match of ``pattern`` in a tool's output, which must have one."""
    match = re.search(pattern, text)
    if match is None:
        raise RuntimeError(f"no {pattern!r} in the output:\n{text}")
    return match


def wrk_post(
    url: str, body: bytes, headers: dict[str, str], seconds: int, connections: int
) -> dict[str, float]:
    """POST ``body`` with wrk for ``seconds``; requests/s and the count of non-2xx answers."""
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is needed for this benchmark: apt-get install wrk")
    with tempfile.TemporaryDirectory() as tmp:
        body_file = Path(tmp) / "body"
        body_file.write_bytes(body)
        lines = ['wrk.method = "POST"', f'local f = io.open("{body_file}", "rb")']
        lines += ["wrk.body = f:read('*a')", "f:close()"]
        for name, value in {"Content-Type": "application/json", **headers}.items():
            lines.append(f'wrk.headers["{name}"] = "{value}"')
        script = Path(tmp) / "post.lua"
        script.write_text("\n".join(lines) + "\n")
        out = subprocess.run(
            ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "-s", str(script), url],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    rps = float(found(r"Requests/sec:\s+([\d.]+)", out).group(1))
    total = int(found(r"(\d+) requests in", out).group(1))
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    return {
        "requests_per_s": rps,
        "requests": total,
        "non_2xx": int(bad.group(1)) if bad else 0,
        # wrk gives up on a request after 2 s: such requests are not counted as answered
        "socket_errors": sum(int(n) for n in errors.groups()) if errors else 0,
    }
