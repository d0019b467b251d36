"""Every test here is marked ``faults``: it kills, stops or starves real processes (Redis, RQ
workers, destinations) and waits for the recovery, so ``-m "not faults"`` leaves them out of a
quick run. The default ``pytest`` runs them."""

from __future__ import annotations

from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in item.path.resolve().parents:
            item.add_marker(pytest.mark.faults)
