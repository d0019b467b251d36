"""A destination added the documented way — one module in a mappings directory, importing only
the SDK, and an emulator beside its test — is configured, checked and delivered to by the real
worker, with nothing in syncworker/ changed."""

from __future__ import annotations

import ast
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from syncworker import codec
from syncworker.devkit.emulators import Emulator, Request, Response
from syncworker.events import HygieneEvent, Kind
from syncworker.queue.enqueue import Enqueuer
from tests.processes import clean_env, start_worker, wait_until

pytestmark = pytest.mark.slow  # real worker processes

ACME = '''
"""Acme CRM: opt contacts out; one batch call per batch."""

from __future__ import annotations

from dataclasses import dataclass

from syncworker.destinations import (
    ContactChange,
    Destination,
    DestinationConfig,
    HttpClient,
    Mode,
    Options,
    Outcome,
    Rate,
    Secret,
    option,
)


@dataclass(frozen=True)
class AcmeOptions(Options):
    api_key: Secret = option(required=True)
    list_name: str = option("newsletter")


class Acme(Destination):
    name = "acme"
    options: AcmeOptions
    base_url = "https://api.acme.example"
    batch_size = 50
    rate = Rate(20, per_seconds=1)
    mode = Mode.STATE

    def __init__(self, config: DestinationConfig, http: HttpClient) -> None:
        super().__init__(config, http)
        self.headers = {"Authorization": f"Bearer {self.options.api_key}"}

    def sync(self, changes: list[ContactChange]) -> list[Outcome]:
        body = {
            "list": self.options.list_name,
            "contacts": [{"email": c.email, "opted_out": c.state.suppressed} for c in changes],
        }
        self.http.post("/v1/contacts", json=body, headers=self.headers)
        return [Outcome.applied() for _ in changes]
'''


class AcmeEmulator(Emulator):
    """What the Acme API promises: bearer auth, a batch endpoint, opted-out contacts kept."""

    def __init__(self, key: str) -> None:
        super().__init__()
        self.key = key
        self.opted_out: set[str] = set()
        self.guard = threading.Lock()
        self.lists: set[str] = set()

    def authorized(self, request: Request) -> bool:
        return request.headers.get("authorization") == f"Bearer {self.key}"

    def handle(self, request: Request) -> Response:
        if request.method != "POST" or request.path != "/v1/contacts":
            return Response(404, {"error": "not found"})
        with self.guard:
            self.lists.add(request.json["list"])
            for contact in request.json["contacts"]:
                if contact["opted_out"]:
                    self.opted_out.add(contact["email"])
        return Response(200, {"ok": True})


@pytest.fixture()
def acme() -> Iterator[AcmeEmulator]:
    with AcmeEmulator(key="acme-key") as emulator:
        yield emulator


@pytest.fixture()
def project(tmp_path: Path) -> Path:
    """A deployment's own directory: its mappings/ holds the new module and nothing else."""
    mappings = tmp_path / "project" / "mappings"
    mappings.mkdir(parents=True)
    (mappings / "acme.py").write_text(ACME.lstrip())
    return mappings


def test_the_new_module_imports_only_the_sdk() -> None:
    imported = {
        node.module
        for node in ast.walk(ast.parse(ACME))
        if isinstance(node, ast.ImportFrom) and node.module
    }
    assert imported == {"__future__", "dataclasses", "syncworker.destinations"}


def test_check_config_loads_it_and_lists_a_missing_option(project: Path, tmp_path: Path) -> None:
    env = clean_env(
        {
            "REDIS_URL": "redis://127.0.0.1:9/0",
            "SYNCWORKER_MAPPINGS_DIR": str(project),
            "SYNCWORKER_DESTINATIONS": "acme",
        }
    )
    check = [sys.executable, "-m", "syncworker", "check-config"]
    missing = subprocess.run(check, env=env, cwd=tmp_path, capture_output=True, text=True)
    assert missing.returncode != 0
    assert "SYNCWORKER_ACME_API_KEY is required by 'acme'" in missing.stderr + missing.stdout
    env["SYNCWORKER_ACME_API_KEY"] = "secret-key"
    ok = subprocess.run(check, env=env, cwd=tmp_path, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert "SYNCWORKER_ACME_API_KEY" in ok.stdout and "secret-key" not in ok.stdout
    assert "SYNCWORKER_ACME_LIST_NAME" in ok.stdout


def test_the_real_worker_delivers_to_it(
    project: Path, acme: AcmeEmulator, redis_url: str, redis_conn: redis.Redis, tmp_path: Path
) -> None:
    env = clean_env(
        {
            "REDIS_URL": redis_url,
            "SYNCWORKER_MAPPINGS_DIR": str(project),
            "SYNCWORKER_DESTINATIONS": "acme",
            "SYNCWORKER_ACME_API_KEY": "acme-key",
            "SYNCWORKER_ACME_BASE_URL": acme.url,
            "SYNCWORKER_ACME_LIST_NAME": "customers",
        }
    )
    emails = [f"acme{i}@example.com" for i in range(120)]
    enqueuer = Enqueuer(redis_conn)
    for i, email in enumerate(emails):
        event = HygieneEvent(f"k{i}", "t", "t", email, Kind.HARD_BOUNCE, 1.7e9 + i)
        enqueuer.ingest({"source": "t", "esp": "t", "events": [codec.dump(event)]}, "ingest", {})
    worker = start_worker(env, tmp_path / "worker.log")
    try:
        wait_until(lambda: acme.opted_out == set(emails), 60, "every contact opted out at Acme")
    finally:
        worker.stop()
    assert acme.lists == {"customers"}
    assert all(r.status == 200 for r in acme.requests)
    assert len(acme.requests) <= 120 // 50 + 2  # batched, not one call per contact
