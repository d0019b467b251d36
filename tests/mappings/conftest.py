"""Fixtures shared by the mapping tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import requests


@pytest.fixture()
def session() -> Iterator[requests.Session]:
    """A real HTTP session, closed after the test (pytest turns unclosed sockets into errors)."""
    with requests.Session() as session:
        yield session
