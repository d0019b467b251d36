"""Packaging stays reproducible: runtime dependencies bounded above, dev tools pinned exactly,
constraints.txt pinning everything the venv holds at the version it holds, and one version
(``syncworker.__version__``) behind the distribution, ``syncworker --version`` and Sentry's
release."""

from __future__ import annotations

import importlib.metadata
import re
import subprocess
import sys
import tomllib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sentry_sdk
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import NormalizedName, canonicalize_name
from sentry_sdk.envelope import Envelope
from sentry_sdk.transport import Transport

import syncworker
from syncworker.observability import setup_sentry

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT: dict[str, Any] = tomllib.loads((ROOT / "pyproject.toml").read_text())
CONSTRAINTS = (ROOT / "constraints.txt").read_text()
SUPPORTED_PYTHONS = ("3.11", "3.12", "3.13", "3.14")  # requires-python = ">=3.11"


def runtime_requirements() -> list[Requirement]:
    return [Requirement(line) for line in PYPROJECT["project"]["dependencies"]]


def dev_requirements() -> list[Requirement]:
    return [Requirement(line) for line in PYPROJECT["project"]["optional-dependencies"]["dev"]]


def has_upper_bound(req: Requirement) -> bool:
    """Some clause caps the version: ``<``, ``<=``, ``~=`` or ``==`` (a wildcard one too)."""
    return any(spec.operator in {"<", "<=", "~=", "==", "==="} for spec in req.specifier)


def pinned_version(req: Requirement) -> str | None:
    """The version of a requirement that allows exactly one (``name==1.2.3``), else None."""
    specs = list(req.specifier)
    if len(specs) != 1 or specs[0].operator != "==" or specs[0].version.endswith(".*"):
        return None
    return specs[0].version


def parse_constraints(text: str) -> dict[NormalizedName, str]:
    """Name -> pinned version of every line of a constraints file; ValueError on a line that is
    not an exact pin for every platform (a range, a marker, a URL) or on a name pinned twice."""
    pins: dict[NormalizedName, str] = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        req = Requirement(line)
        version = pinned_version(req)
        if version is None or req.marker is not None or req.url or req.extras:
            raise ValueError(f"not an exact pin: {line!r}")
        name = canonicalize_name(req.name)
        if name in pins:
            raise ValueError(f"pinned twice: {req.name}")
        pins[name] = version
    return pins


HERE: dict[str, str] = {k: str(v) for k, v in default_environment().items()}


def environments(pythons: Iterable[str]) -> list[dict[str, str]]:
    """This platform's marker environment as each of ``pythons`` (its first release) sees it."""
    return [{**HERE, "python_version": v, "python_full_version": v + ".0"} for v in pythons]


def required(
    root: str, extras: Iterable[str], envs: list[dict[str, str]]
) -> dict[NormalizedName, importlib.metadata.Distribution | None]:
    """Every package ``root[extras]`` requires, transitively, in any of ``envs`` -> its installed
    distribution (None if not installed here: its own requirements are then unknown)."""
    found: dict[NormalizedName, importlib.metadata.Distribution | None] = {}
    seen: set[tuple[NormalizedName, str]] = set()
    todo: list[tuple[str, str]] = [(root, extra) for extra in ("", *extras)]
    while todo:
        name, extra = todo.pop()
        key = canonicalize_name(name)
        if (key, extra) in seen:
            continue
        seen.add((key, extra))
        if key not in found:
            try:
                found[key] = importlib.metadata.distribution(name)
            except importlib.metadata.PackageNotFoundError:
                found[key] = None
        dist = found[key]
        if dist is None:
            continue
        for line in dist.requires or []:
            req = Requirement(line)
            if req.marker is None or any(
                req.marker.evaluate({**env, "extra": extra}) for env in envs
            ):
                todo += [(req.name, e) for e in ("", *req.extras)]
    del found[canonicalize_name(root)]
    return found


# -- pyproject.toml ----------------------------------------------------------------------------


def test_the_checks_tell_bounded_and_pinned_from_open() -> None:
    assert not has_upper_bound(Requirement("gunicorn>=23"))
    assert not has_upper_bound(Requirement("gunicorn!=24,>=23"))
    assert has_upper_bound(Requirement("gunicorn>=23,<28"))
    assert has_upper_bound(Requirement("orjson~=3.10"))
    assert pinned_version(Requirement("ruff==0.17.6")) == "0.17.6"
    assert pinned_version(Requirement("ruff>=0.17")) is None
    assert pinned_version(Requirement("ruff==0.17.*")) is None
    assert pinned_version(Requirement("ruff==0.17.6,!=0.17.5")) is None
    assert parse_constraints("# c\nFlask==3.1.3  # web\n\nredis==8.2.0\n") == {
        "flask": "3.1.3",
        "redis": "8.2.0",
    }
    for bad in ("flask>=3", "flask==3.*", "pywin32==311; sys_platform == 'win32'", "a==1\nA==1"):
        with pytest.raises(ValueError):
            parse_constraints(bad)


def test_every_runtime_dependency_has_an_upper_bound() -> None:
    reqs = runtime_requirements()
    assert reqs
    assert [str(r) for r in reqs if not has_upper_bound(r)] == []


def test_every_dev_tool_is_pinned_exactly() -> None:
    reqs = dev_requirements()
    assert {"ruff", "mypy", "pytest", "hypothesis", "types-requests"} <= {r.name for r in reqs}
    assert [str(r) for r in reqs if pinned_version(r) is None] == []


# -- constraints.txt ---------------------------------------------------------------------------


def test_constraints_pin_every_required_package_at_its_installed_version() -> None:
    pins = parse_constraints(CONSTRAINTS)
    needed = required("syncworker", ["dev"], [HERE])
    assert {"flask", "ruff", "cffi", "setuptools"} <= set(needed)  # transitive ones too
    unpinned = sorted(name for name in needed if name not in pins)
    assert unpinned == [], "not in constraints.txt (bash .ci/lock)"
    drifted = {
        name: (dist.version if dist else None, pins[name])
        for name, dist in needed.items()
        if dist is None or dist.version != pins[name]
    }
    assert drifted == {}, "installed != pinned: run the README's setup command again"


def test_constraints_satisfy_pyproject() -> None:
    pins = parse_constraints(CONSTRAINTS)
    outside = [
        f"{req} (pinned {pins.get(canonicalize_name(req.name))})"
        for req in [*runtime_requirements(), *dev_requirements()]
        if canonicalize_name(req.name) not in pins
        or not req.specifier.contains(pins[canonicalize_name(req.name)], prereleases=True)
    ]
    assert outside == [], "pyproject.toml changed: bash .ci/lock"


def test_constraints_pin_nothing_this_platform_does_not_need() -> None:
    """No stale pin, and none for another platform (pywin32, say): a pin must be required here by
    some supported Python (the file is generated on the oldest)."""
    needed = required("syncworker", ["dev"], [HERE, *environments(SUPPORTED_PYTHONS)])
    assert sorted(set(parse_constraints(CONSTRAINTS)) - set(needed)) == []


def test_constraints_say_how_to_regenerate_them() -> None:
    header = CONSTRAINTS.split("\n\n", 1)[0].splitlines()[:3]
    assert any("bash .ci/lock" in line for line in header if line.startswith("#"))
    assert (ROOT / ".ci" / "lock").is_file()


def test_ci_runs_the_readme_setup_command() -> None:
    readme = (ROOT / "README.md").read_text()
    setup = re.search(r"^\| setup \| `([^`]+)` \|$", readme, re.MULTILINE)
    assert setup is not None
    install = setup.group(1).split(" && ")[-1]
    assert "-c constraints.txt" in install
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert install in [line.replace(" -q", "") for line in ci]


# -- one version -------------------------------------------------------------------------------


def test_the_version_has_one_source() -> None:
    project = PYPROJECT["project"]
    assert "version" not in project and "version" in project["dynamic"]
    dynamic = PYPROJECT["tool"]["setuptools"]["dynamic"]["version"]
    assert dynamic == {"attr": "syncworker.__version__"}
    assert importlib.metadata.version("syncworker") == syncworker.__version__


def test_syncworker_version_prints_it() -> None:
    script = Path(sys.executable).parent / "syncworker"
    result = subprocess.run(
        [str(script), "--version"], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout == f"syncworker {syncworker.__version__}\n"
    assert result.stdout.split()[1] == importlib.metadata.version("syncworker")


class CapturingTransport(Transport):
    def __init__(self, options: Any = None) -> None:
        super().__init__(options)
        self.envelopes: list[Envelope] = []

    def capture_envelope(self, envelope: Envelope) -> None:
        self.envelopes.append(envelope)


@pytest.fixture()
def transport() -> Iterator[CapturingTransport]:
    transport = CapturingTransport()
    yield transport
    sentry_sdk.get_client().close()
    sentry_sdk.init(dsn=None)


def captured_release(transport: CapturingTransport) -> str:
    sentry_sdk.capture_message("release check")
    sentry_sdk.flush()
    events = [e.get_event() for e in transport.envelopes]
    releases = [event["release"] for event in events if event is not None]
    assert len(releases) == 1
    return str(releases[0])


def test_sentry_events_carry_the_release(transport: CapturingTransport) -> None:
    assert setup_sentry("http://public@127.0.0.1:9/1", transport=transport)
    assert captured_release(transport) == "syncworker@" + syncworker.__version__


def test_a_given_sentry_release_wins(transport: CapturingTransport) -> None:
    assert setup_sentry("http://public@127.0.0.1:9/1", transport=transport, release="x@1")
    assert captured_release(transport) == "x@1"
