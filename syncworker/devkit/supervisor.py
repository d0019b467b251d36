"""Child processes for local runs, the demo, the tests and the benchmarks: one way to start,
watch and stop them.

Each child leads a process group of its own, so a Ctrl-C reaches only the parent, which stops
the children in order; stopping is SIGTERM, a grace, then SIGKILL of the whole group, so no
grandchild (an RQ work-horse, a gunicorn worker) outlives the run. :meth:`Child.kill_tree`
kills a child and every process below it at once, as a dead machine would (RQ's work-horses
lead groups of their own, so the tree is found by parent ids, not by the group).

``syncworker worker`` (production) supervises its RQ worker processes itself, with restarts; this
module is for running syncworker, not for being it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import IO, TypedDict, Unpack

#: seconds a child gets between SIGTERM and SIGKILL unless told otherwise
STOP_GRACE_S = 20.0


class Where(TypedDict, total=False):
    """How a child runs: its environment (the parent's by default), its log file (the parent's
    terminal by default) and its working directory."""

    env: Mapping[str, str] | None
    log: Path | None
    cwd: Path | None


class ChildExited(RuntimeError):
    """A child that should be running has exited; the message ends with its log's last lines."""

    def __init__(self, child: Child) -> None:
        self.child = child
        tail = child.tail()
        super().__init__(
            f"{child.name} exited ({child.returncode})" + (f":\n{tail}" if tail else "")
        )


class Child:
    """A process leading a group of its own, its output in ``log`` (or the parent's terminal)."""

    def __init__(self, name: str, args: list[str], **where: Unpack[Where]) -> None:
        self.name = name
        self.args = args
        log, env = where.get("log"), where.get("env")
        self.log_path = log
        self._log: IO[bytes] | None = log.open("wb") if log is not None else None
        self.proc = subprocess.Popen(
            args,
            cwd=where.get("cwd"),
            env=dict(env) if env is not None else None,
            stdout=self._log,
            stderr=subprocess.STDOUT if self._log is not None else None,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def returncode(self) -> int | None:
        return self.proc.poll()

    def alive(self) -> bool:
        return self.proc.poll() is None

    def check(self) -> None:
        """:class:`ChildExited` if the child is no longer running."""
        if not self.alive():
            raise ChildExited(self)

    def output(self) -> str:
        """Everything the child wrote to its log so far ("" without a log)."""
        if self._log is not None and not self._log.closed:
            self._log.flush()
        if self.log_path is None:
            return ""
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def tail(self, lines: int = 20) -> str:
        return "\n".join(self.output().splitlines()[-lines:])

    def send_signal(self, sig: int = signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(sig)

    def stop(self, grace: float = STOP_GRACE_S, sig: int = signal.SIGTERM) -> None:
        """``sig``, up to ``grace`` seconds for the child to exit, then SIGKILL of its group
        (leftovers of a group it led are killed even when it exited in time)."""
        self.send_signal(sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(max(0.0, grace))
        self._kill_group()
        self.proc.wait()
        self._close()

    def kill_tree(self) -> None:
        """SIGKILL the child and every process below it at once: nothing gets to clean up."""
        if self.proc.poll() is None:
            tree = descendants(self.proc.pid)
            self._kill_group()
            for pid in tree:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        self.proc.wait()
        self._close()

    def _kill_group(self) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)

    def _close(self) -> None:
        if self._log is not None:
            self._log.close()


class Supervisor:
    """Children started together and stopped together, last started first."""

    def __init__(self, *, grace: float = STOP_GRACE_S) -> None:
        self.grace = grace
        self.children: dict[str, Child] = {}

    def __enter__(self) -> Supervisor:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self, name: str, args: list[str], **where: Unpack[Where]) -> Child:
        if name in self.children:
            raise ValueError(f"a child named {name!r} is already supervised")
        child = Child(name, args, **where)
        self.children[name] = child
        return child

    def check(self) -> None:
        """:class:`ChildExited` for the first child that is no longer running."""
        for child in self.children.values():
            child.check()

    def wait_until(
        self, ready: Callable[[], bool], timeout: float, what: str, interval: float = 0.1
    ) -> None:
        """Poll ``ready`` until it is true, raising :class:`ChildExited` as soon as a child dies
        and TimeoutError past ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            self.check()
            if ready():
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what}: not within {timeout:.0f} s")
            time.sleep(interval)

    def wait_any(self, stop: threading.Event, poll: float = 0.5) -> Child | None:
        """Block until ``stop`` is set (None) or a child exits (that child)."""
        while not stop.wait(poll):
            for child in self.children.values():
                if not child.alive():
                    return child
        return None

    def signal_all(self, sig: int = signal.SIGTERM) -> None:
        for child in self.children.values():
            child.send_signal(sig)

    def stop(self, grace: float | None = None) -> None:
        """SIGTERM every child at once, give them ``grace`` seconds together, then SIGKILL
        each one's group: a slow child does not hold up the others' stop."""
        children = list(reversed(self.children.values()))
        self.signal_all()
        deadline = time.monotonic() + (self.grace if grace is None else grace)
        for child in children:
            child.stop(grace=deadline - time.monotonic())
        self.children.clear()


def descendants(root: int) -> list[int]:
    """Every living process below ``root`` (children, grandchildren, ...), from /proc."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        parents.setdefault(int(fields[1]), []).append(int(entry))
    found: list[int] = []
    todo = [root]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def cpu_seconds(pids: Iterable[int]) -> float:
    """User + system CPU seconds used so far by ``pids`` and every process below them."""
    ticks = 0
    for pid in pids:
        for each in [pid, *descendants(pid)]:
            try:
                with open(f"/proc/{each}/stat", encoding="ascii", errors="replace") as stat:
                    fields = stat.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")
