"""`syncworker import` (an ESP's suppression export into the ledger) and `syncworker export`."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import redis
from click.testing import CliRunner

from syncworker.cli import main
from syncworker.store.keys import PENDING

SENDGRID_BOUNCES = """\ufeffcreated,email,reason,status
1700000000,Alice@Example.com,550 5.1.1 unknown,5.1.1
1700000100,bob@example.com,550 5.1.1 unknown,5.1.1
1700000200,not an address,x,x
1700000300,,x,x
"""


def run(redis_url: str, *args: str) -> tuple[int, str, str]:
    env = {
        "REDIS_URL": redis_url,
        "SYNCWORKER_DESTINATIONS": "hubspot",
        "SYNCWORKER_HUBSPOT_TOKEN": "t",
    }
    result = CliRunner().invoke(main, list(args), env=env)
    return result.exit_code, result.stdout, result.stderr


def test_import_seeds_the_ledger_and_marks_destinations(
    redis_url: str, redis_conn: redis.Redis, tmp_path: Path
) -> None:
    path = tmp_path / "bounces.csv"
    path.write_text(SENDGRID_BOUNCES, encoding="utf-8")
    code, out, err = run(redis_url, "import", str(path), "--kind", "hard_bounce",
                         "--source", "sendgrid")  # fmt: skip
    assert code == 0, out + err
    assert "2 applied, 0 already imported, 2 rejected" in out
    assert "line 4: not an email address" in err and "line 5: not an email address" in err
    assert redis_conn.zcard(PENDING + "hubspot") == 2
    code, out, _ = run(redis_url, "lookup", "alice@example.com")
    assert '"hard_bounce"' in out and '"source": "sendgrid"' in out
    assert '"at": 1700000000.0' in out  # the export's own time, not the import's
    code, out, _ = run(redis_url, "import", str(path), "--kind", "hard_bounce",
                       "--source", "sendgrid")  # fmt: skip
    assert "0 applied, 2 already imported" in out  # importing again changes nothing


def test_import_explains_a_file_without_an_address_column(redis_url: str, tmp_path: Path) -> None:
    path = tmp_path / "x.csv"
    path.write_text("name,age\nx,1\n", encoding="utf-8")
    code, out, err = run(redis_url, "import", str(path), "--kind", "unsubscribe")
    assert code == 1 and "no address column" in out + err


def test_export_lists_the_suppressed_addresses(redis_url: str, tmp_path: Path) -> None:
    path = tmp_path / "u.csv"
    path.write_text("email\nc@example.com\nd@example.com\n", encoding="utf-8")
    run(redis_url, "import", str(path), "--kind", "unsubscribe")
    run(redis_url, "unsuppress", "d@example.com", "--reason", "asked back")
    code, out, _ = run(redis_url, "export")
    rows = list(csv.DictReader(io.StringIO(out)))
    assert code == 0
    assert [(r["email"], r["suppressed"], r["reasons"]) for r in rows] == [
        ("c@example.com", "yes", "unsubscribe")
    ]
    code, out, _ = run(redis_url, "export", "--all")
    assert sorted(r["email"] for r in csv.DictReader(io.StringIO(out))) == [
        "c@example.com",
        "d@example.com",
    ]
