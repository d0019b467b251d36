"""Every module in mappings/: its declarations, its shape, and a test class running the contract.

Parametrized over the modules found in ``mappings/``, so a new mapping is checked the moment it
is added: a module without ``tests/mappings/test_<name>.py`` defining a ``StateContract`` or
``EventsContract`` subclass (matching its mode) fails here.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
import sys
from pathlib import Path

import pytest

import mappings
from syncworker.destinations import Destination, Kind, Mode, destination_class
from tests.mappings.contract import EventsContract, StateContract

NAMES = sorted(m.name for m in pkgutil.iter_modules(mappings.__path__) if not m.ispkg)
ALLOWED_TOP_LEVEL = (
    ast.Import,
    ast.ImportFrom,
    ast.Assign,
    ast.AnnAssign,
    ast.ClassDef,
    ast.FunctionDef,
)


def source(name: str) -> str:
    return Path(mappings.__path__[0], f"{name}.py").read_text()


def test_the_mappings_we_ship_are_found() -> None:
    assert {"hubspot", "segment", "webhook"} <= set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_the_module_defines_one_destination_named_after_it(name: str) -> None:
    cls = destination_class(name)
    assert cls.name == name
    module = importlib.import_module(f"mappings.{name}")
    own = [
        obj
        for obj in vars(module).values()
        if inspect.isclass(obj) and issubclass(obj, Destination) and obj is not Destination
    ]
    assert own == [cls]


@pytest.mark.parametrize("name", NAMES)
def test_the_declarations_the_delivery_loop_reads_are_sane(name: str) -> None:
    cls = destination_class(name)
    assert 1 <= cls.batch_size <= 1000
    assert cls.rate.requests > 0 and cls.rate.per_seconds > 0
    assert isinstance(cls.mode, Mode)
    assert cls.kinds and cls.kinds <= frozenset(Kind)
    assert all(key.isupper() and key.isidentifier() for key in cls.settings)
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in cls.optional_settings.items())
    assert not set(cls.settings) & set(cls.optional_settings)
    assert cls.base_url == "" or cls.base_url.startswith("https://")
    assert cls.sync is not Destination.sync or cls.sync_one is not Destination.sync_one


@pytest.mark.parametrize("name", NAMES)
def test_the_module_imports_only_the_destination_interface(name: str) -> None:
    tree = ast.parse(source(name))
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            top = node.module.split(".")[0]
            assert node.module == "syncworker.destinations" or top in sys.stdlib_module_names, (
                node.module
            )
        if isinstance(node, ast.Import):
            for alias in node.names:
                top = alias.name.split(".")[0]
                assert top in sys.stdlib_module_names or top == "requests", alias.name
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            # every call goes through self.http, which applies the shared rate limit
            assert node.value.id != "requests" or node.attr[0].isupper(), f"requests.{node.attr}"


@pytest.mark.parametrize("name", NAMES)
def test_the_module_runs_nothing_at_import_and_follows_the_house_style(name: str) -> None:
    text = source(name)
    tree = ast.parse(text)
    assert ast.get_docstring(tree), "a module docstring saying what it owns"
    body = tree.body[1:]
    assert isinstance(body[0], ast.ImportFrom) and body[0].module == "__future__"
    for node in body:
        assert isinstance(node, ALLOWED_TOP_LEVEL), ast.dump(node)[:120]
    assert 80 <= len(text.splitlines()) <= 250


@pytest.mark.parametrize("name", NAMES)
def test_the_module_has_a_test_file_running_the_contract(name: str) -> None:
    module = importlib.import_module(f"tests.mappings.test_{name}")
    base = StateContract if destination_class(name).mode is Mode.STATE else EventsContract
    runners = [
        obj
        for obj in vars(module).values()
        if inspect.isclass(obj)
        and issubclass(obj, base)
        and obj.__name__.startswith("Test")
        and getattr(obj, "destination", None) == name
    ]
    assert len(runners) == 1, f"tests/mappings/test_{name}.py needs one {base.__name__} subclass"
