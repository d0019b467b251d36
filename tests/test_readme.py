"""README.md stays true: every setting, ESP and destination the code knows is documented."""

from __future__ import annotations

import pkgutil
from pathlib import Path

import mappings
from syncworker.config import DESTINATION_COMMON, OPTIONS, PREFIX
from syncworker.destinations import destination_class
from syncworker.intake.registry import ESP_PARSERS

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def test_every_global_setting_is_in_the_configuration_table() -> None:
    for option in OPTIONS.values():
        assert f"| `{PREFIX}{option.env}` |" in README, option.env


def test_every_esp_has_a_row_with_its_settings() -> None:
    for slug, parser in ESP_PARSERS.items():
        row = next((line for line in README.splitlines() if f"| `{slug}` |" in line), None)
        assert row is not None, slug
        for key in parser.settings:
            assert f"`{key}`" in row, (slug, key)


def test_every_destination_has_a_row_with_its_settings() -> None:
    names = [m.name for m in pkgutil.iter_modules(mappings.__path__)]
    assert names
    for name in names:
        dest = destination_class(name)
        row = next((line for line in README.splitlines() if f"| `{name}` |" in line), None)
        assert row is not None, name
        for key in [*dest.settings, *dest.optional_settings]:
            assert f"`{key}`" in row, (name, key)
    for key in DESTINATION_COMMON:
        assert f"{PREFIX}<NAME>_{key}" in README
