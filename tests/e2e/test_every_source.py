"""Every ESP module, through the real endpoint (gunicorn) and a real worker, into the ledger."""

from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path

import pytest
import redis
import requests

from syncworker.intake.registry import ESP_PARSERS
from tests import ledger_reads
from tests.intake.signing import headers_of, payload, signer_for
from tests.processes import Process, clean_env, start_gunicorn, start_worker, wait_until

pytestmark = pytest.mark.slow  # the whole pipeline in real processes

PUBLIC_URL = "https://hooks.example.com"  # what URL-signing ESPs signed; the app is told so


def ledger_kinds(conn: redis.Redis) -> dict[str, Counter[str]]:
    kinds: dict[str, Counter[str]] = defaultdict(Counter)
    led = ledger_reads.reader(conn)
    cursor = 0
    while True:
        cursor, emails = led.scan(cursor, 1000)
        for email in emails:
            for entry in ledger_reads.history(conn, email):
                kinds[entry["source"]][entry["kind"]] += 1
        if cursor == 0:
            break
    return kinds


def test_every_source_yields_its_kinds_in_the_ledger(
    redis_url: str, redis_conn: redis.Redis, tmp_path: Path
) -> None:
    signers = {esp: signer_for(esp) for esp in ESP_PARSERS}
    without = sorted(esp for esp, s in signers.items() if not s.sample[0])
    assert not without, f"give these signers a sample (tests/intake/signing.py): {without}"
    env = clean_env(
        {
            "REDIS_URL": redis_url,
            "SYNCWORKER_SOURCES": ",".join(signers),
            "SYNCWORKER_PUBLIC_URL": PUBLIC_URL,
        }
    )
    for esp, signer in signers.items():
        for key, value in signer.values.items():
            env[f"SYNCWORKER_{esp.upper()}_{key}"] = value
    web, url = start_gunicorn(env, tmp_path / "web.log")
    worker: Process | None = None
    try:
        with requests.Session() as http:
            for esp, signer in signers.items():
                signed = signer.sign(payload(esp, signer.sample[0]))
                if ESP_PARSERS[esp].signs_url:
                    assert signed.url == f"{PUBLIC_URL}/webhooks/{esp}", f"{esp}: sign that URL"
                headers = headers_of(signed)
                answer = http.post(f"{url}/webhooks/{esp}", data=signed.body, headers=headers)
                assert answer.status_code == 200, (esp, answer.text)
                assert answer.json()["accepted"] == sum(signer.sample[1].values()), esp
        worker = start_worker(env, tmp_path / "worker.log")
        expected = {esp: Counter(s.sample[1]) for esp, s in signers.items()}
        wait_until(
            lambda: ledger_kinds(redis_conn) == expected, 60, "every source in the ledger", 0.2
        )
    finally:
        if worker is not None:
            worker.stop()
        web.stop()
