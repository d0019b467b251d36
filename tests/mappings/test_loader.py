"""Mapping modules load from the project's mappings directory, never from a ``mappings`` package
another distribution installed."""

from __future__ import annotations

import importlib
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

import mappings.hubspot
from syncworker.bootstrap import load_settings
from syncworker.destinations import ConfigError, destination_class, mappings_dir

PROJECT = Path(mappings.__path__[0]).resolve()
ACME = '''
"""Acme: a mapping outside the project's directory."""

from __future__ import annotations

from dataclasses import dataclass

from syncworker.destinations import ContactChange, Destination, Options, Outcome, Secret, option


@dataclass(frozen=True)
class AcmeOptions(Options):
    api_key: Secret = option(required=True)


class Acme(Destination):
    name = "acme"
    options: AcmeOptions

    def sync(self, changes: list[ContactChange]) -> list[Outcome]:
        return [Outcome.applied() for _ in changes]
'''


@pytest.fixture()
def fresh_modules() -> Iterator[None]:
    """No ``mappings`` imported during the test; the test run's own modules put back after it,
    so that every other test keeps the classes it imported."""
    saved = {k: m for k, m in sys.modules.items() if k == "mappings" or k.startswith("mappings.")}
    for key in saved:
        del sys.modules[key]
    try:
        yield
    finally:
        for key in [k for k in sys.modules if k == "mappings" or k.startswith("mappings.")]:
            del sys.modules[key]
        sys.modules.update(saved)


def package(root: Path, **modules: str) -> Path:
    """A directory ``root/mappings`` holding ``modules`` (name -> source)."""
    directory = root / "mappings"
    directory.mkdir(parents=True)
    (directory / "__init__.py").write_text("")
    for name, text in modules.items():
        (directory / f"{name}.py").write_text(textwrap.dedent(text))
    return directory


def test_a_test_import_and_the_loader_share_one_module() -> None:
    assert mappings_dir() == PROJECT
    assert destination_class("hubspot") is mappings.hubspot.HubSpot
    assert sys.modules["mappings.hubspot"] is mappings.hubspot


@pytest.mark.usefixtures("fresh_modules")
def test_the_directory_given_by_the_setting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    custom = tmp_path / "crm-mappings"
    custom.mkdir()
    (custom / "acme.py").write_text(ACME)  # no __init__.py needed
    monkeypatch.setenv("SYNCWORKER_MAPPINGS_DIR", str(custom))
    assert mappings_dir() == custom
    acme = destination_class("acme")
    assert acme.name == "acme" and acme.settings == ("API_KEY",)
    assert sys.modules["mappings.acme"].__file__ == str(custom / "acme.py")
    with pytest.raises(ConfigError, match="no module mappings/hubspot.py"):
        destination_class("hubspot")  # the project's mappings are not in that directory


@pytest.mark.usefixtures("fresh_modules")
def test_the_setting_is_read_by_the_configuration(tmp_path: Path) -> None:
    custom = tmp_path / "crm"
    custom.mkdir()
    (custom / "acme.py").write_text(ACME)
    env = {
        "SYNCWORKER_MAPPINGS_DIR": str(custom),
        "SYNCWORKER_DESTINATIONS": "acme",
        "SYNCWORKER_ACME_API_KEY": "k",
    }
    settings = load_settings(env)
    assert settings.mappings_dir == str(custom)
    assert settings.destinations["acme"].secret_keys == {"API_KEY"}
    with pytest.raises(ConfigError, match="SYNCWORKER_ACME_API_KEY is required by 'acme'"):
        load_settings({**env, "SYNCWORKER_ACME_API_KEY": ""})


@pytest.mark.usefixtures("fresh_modules")
def test_the_working_directory_comes_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    package(tmp_path, acme=ACME)
    monkeypatch.chdir(tmp_path)
    assert destination_class("acme").__module__ == "mappings.acme"
    assert Path(sys.modules["mappings"].__path__[0]) == (tmp_path / "mappings").resolve()


@pytest.mark.usefixtures("fresh_modules")
def test_a_foreign_mappings_package_on_sys_path_is_not_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another distribution's ``mappings`` (first on sys.path) is neither imported nor used: the
    working directory has no mappings/, so the source checkout's is loaded."""
    foreign = package(tmp_path / "site-packages", hubspot="raise ImportError('foreign')\n")
    monkeypatch.syspath_prepend(str(foreign.parent))
    monkeypatch.chdir(tmp_path)
    assert mappings_dir() == PROJECT
    hubspot = destination_class("hubspot")
    assert Path(sys.modules[hubspot.__module__].__file__ or "") == PROJECT / "hubspot.py"
    assert Path(sys.modules["mappings"].__path__[0]) == PROJECT


@pytest.mark.usefixtures("fresh_modules")
def test_a_foreign_mappings_package_already_imported_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    foreign = package(tmp_path / "site-packages")
    monkeypatch.syspath_prepend(str(foreign.parent))
    imported = importlib.import_module("mappings")
    assert isinstance(imported, ModuleType)
    with pytest.raises(ConfigError) as caught:
        destination_class("hubspot")
    (problem,) = caught.value.problems
    assert "another package named 'mappings' is already imported" in problem
    assert str(foreign) in problem and str(PROJECT) in problem
    assert "SYNCWORKER_MAPPINGS_DIR" in problem


def test_a_missing_module_names_the_file_and_the_directory() -> None:
    with pytest.raises(ConfigError) as caught:
        destination_class("nosuchdest")
    assert caught.value.problems == [
        f"destination 'nosuchdest': no module mappings/nosuchdest.py (looked in {PROJECT})"
    ]


def test_a_missing_directory_is_a_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no mappings directory"):
        destination_class("hubspot", tmp_path / "absent")


def test_a_bad_name_is_refused_before_any_import() -> None:
    with pytest.raises(ConfigError, match="not a valid module name"):
        destination_class("../etc")
