"""`syncworker demo --exit` as a real process: the summary shows every state and delivery, and
nothing it started (Redis, gunicorn, the worker and their children) outlives it."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from syncworker.devkit.redis_server import free_port
from tests.processes import Process, clean_env, wait_until

pytestmark = pytest.mark.slow  # the demo's every process

MARKER = "DEMO_TEST_RUN"  # inherited by everything the demo starts


def marked(value: str) -> list[int]:
    """Pids of the live processes whose environment carries ``MARKER=value``: every process the
    demo started inherits it."""
    needle = f"{MARKER}={value}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:  # gone, or not ours
            continue
        if needle in environ.split(b"\0"):
            found.append(int(entry.name))
    return found


def listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_demo_summary_and_cleanup(tmp_path: Path) -> None:
    run = uuid.uuid4().hex
    port = free_port()
    env = clean_env({MARKER: run, "REDIS_URL": "redis://127.0.0.1:1/0"})  # must be ignored
    args = [sys.executable, "-m", "syncworker", "demo", "--exit", "--port", str(port)]
    demo = Process(args, env, tmp_path / "demo.log")
    try:
        try:
            code = demo.proc.wait(120)
        except subprocess.TimeoutExpired:
            pytest.fail(f"demo did not finish in 120 s:\n{demo.output()}")
        out = demo.output()
        assert code == 0, out

        # the ledger, address by address, and each suppression synced everywhere
        for email, reason, source in [
            ("hard-bounce@example.com", "hard_bounce", "postmark"),
            ("complaint@example.com", "spam_complaint", "postmark"),
            ("unsubscribe@example.com", "unsubscribe", "standard_webhooks"),
        ]:
            line = rf"{re.escape(email)}\s+suppressed\s+{reason} \(from {source}\)\n"
            synced = r"\s+synced: hubspot applied, segment applied, webhook applied\n"
            assert re.search(line + synced, out), out
        assert re.search(r"soft-bounce@example\.com\s+active\s+history: soft_bounce", out), out
        assert re.search(r"delivered@example\.com\s+not in the ledger", out), out
        assert "in:postmark:Delivery=1" in out

        # what each emulator received
        opted = "complaint@example.com, hard-bounce@example.com, unsubscribe@example.com"
        assert f"opted out of all email: {opted}\n" in out
        assert re.search(r"properties hard-bounce@example\.com: .*hygiene_status=hard_bounce", out)
        assert "properties complaint@example.com: syncworker_hygiene_status=spam_complaint" in out
        assert "properties soft-bounce@example.com" not in out  # below the threshold
        for track in [
            'track "Email Bounced" userId=hard-bounce@example.com',
            'track "Email Marked as Spam" userId=complaint@example.com',
            'track "Unsubscribed" userId=unsubscribe@example.com',
            'track "Email Soft Bounced" userId=soft-bounce@example.com',
        ]:
            assert track in out
        assert out.count('track "') == 4
        assert re.search(r"signed deliveries: [1-4], rejected: 0\n", out), out
        for kind, email in [
            ("hard_bounce", "hard-bounce"),
            ("spam_complaint", "complaint"),
            ("unsubscribe", "unsubscribe"),
            ("soft_bounce", "soft-bounce"),
        ]:
            assert f"event kind={kind} email={email}@example.com" in out
        assert out.count("event kind=") == 4
        assert f"http://127.0.0.1:{port}/webhooks/postmark" in out  # the curl examples

        # nothing left behind: no process, and the port is free again
        wait_until(lambda: not marked(run), 5, "the demo's processes to be gone")
        assert not listening(port)
    finally:
        for pid in marked(run):  # only if the test failed: never leak into the next test
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        demo.kill_tree()
