"""The one supervisor of local runs, the demo, the tests and the benchmarks, with real processes."""

from __future__ import annotations

import os
import signal
import sys
import threading
from pathlib import Path

import pytest

from syncworker.devkit.supervisor import ChildExited, Supervisor, cpu_seconds, descendants
from tests.processes import wait_until

# a child that starts a grandchild in its own session (as RQ's work-horse leads its own group),
# prints both pids, then waits
FAMILY = """
import os, signal, subprocess, sys
grandchild = subprocess.Popen([sys.executable, "-c", "import signal; signal.pause()"],
                              start_new_session=True)
print(os.getpid(), grandchild.pid, flush=True)
signal.pause()
"""
# a child that ignores SIGTERM, with a grandchild in its group
STUBBORN = """
import signal, subprocess, sys
signal.signal(signal.SIGTERM, signal.SIG_IGN)
grandchild = subprocess.Popen([sys.executable, "-c", "import signal; signal.pause()"])
print(grandchild.pid, flush=True)
signal.pause()
"""


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def pids(log: Path, count: int) -> list[int]:
    wait_until(lambda: len(log.read_text().split()) >= count, 20, "the child's pids")
    return [int(p) for p in log.read_text().split()[:count]]


def test_kill_tree_kills_grandchildren_that_lead_groups_of_their_own(tmp_path: Path) -> None:
    with Supervisor() as children:
        child = children.start("family", [sys.executable, "-c", FAMILY], log=tmp_path / "f.log")
        me, grandchild = pids(tmp_path / "f.log", 2)
        assert me == child.pid and grandchild in descendants(child.pid)
        assert os.getpgid(child.pid) == child.pid  # the child leads its own group
        child.kill_tree()
        wait_until(lambda: not alive(grandchild), 10, "the grandchild killed")
        assert child.returncode == -signal.SIGKILL


def test_stop_kills_a_child_that_ignores_sigterm_and_its_group_after_the_grace(
    tmp_path: Path,
) -> None:
    children = Supervisor(grace=0.5)
    children.start("stubborn", [sys.executable, "-c", STUBBORN], log=tmp_path / "s.log")
    (grandchild,) = pids(tmp_path / "s.log", 1)
    child = children.children["stubborn"]
    children.stop()
    assert child.returncode == -signal.SIGKILL
    wait_until(lambda: not alive(grandchild), 10, "the grandchild killed with the group")
    assert children.children == {}


def test_a_child_that_dies_is_reported_with_the_end_of_its_log(tmp_path: Path) -> None:
    script = "import sys; print('line one'); print('it broke', flush=True); sys.exit(3)"
    with Supervisor() as children:
        children.start("short", [sys.executable, "-c", script], log=tmp_path / "short.log")
        with pytest.raises(ChildExited) as caught:
            children.wait_until(lambda: False, 20, "something that never comes")
    assert str(caught.value).startswith("short exited (3):")
    assert str(caught.value).endswith("line one\nit broke")


def test_wait_any_returns_the_child_that_exited_or_none_when_stopped(tmp_path: Path) -> None:
    with Supervisor() as children:
        children.start("long", [sys.executable, "-c", "import signal; signal.pause()"])
        quick = children.start("quick", [sys.executable, "-c", "pass"])
        assert children.wait_any(threading.Event(), poll=0.05) is quick
    stop = threading.Event()
    stop.set()
    with Supervisor() as children:
        children.start("long", [sys.executable, "-c", "import signal; signal.pause()"])
        assert children.wait_any(stop) is None


def test_cpu_seconds_counts_the_processes_below(tmp_path: Path) -> None:
    """A parent that only waits, and a grandchild that burns: the parent's tree has the time."""
    burn = "while True: pass"
    parent = "import signal, subprocess, sys\n"
    parent += f"p = subprocess.Popen([sys.executable, '-c', {burn!r}])\n"
    parent += "print(p.pid, flush=True)\nsignal.pause()\n"
    with Supervisor() as children:
        child = children.start("p", [sys.executable, "-c", parent], log=tmp_path / "p.log")
        (burner,) = pids(tmp_path / "p.log", 1)
        wait_until(lambda: cpu_seconds([burner]) >= 0.3, 30, "the burner to use 0.3 s")
        tree = cpu_seconds([child.pid])
        with open(f"/proc/{child.pid}/stat", encoding="ascii") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        own = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        assert tree - own >= 0.3
