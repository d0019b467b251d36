"""``syncworker.destinations`` is the SDK: what it exports; mappings import nothing else."""

from __future__ import annotations

import ast
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

import syncworker.destinations as sdk
from syncworker.destinations import mappings_dir

MAPPINGS = sorted(mappings_dir().glob("*.py"))
SUBMODULES = ("interface", "http", "oauth", "options", "streams", "convert", "loader")


def test_all_is_exactly_the_public_names() -> None:
    public = {
        name
        for name, value in vars(sdk).items()
        if not name.startswith("_") and not isinstance(value, ModuleType)
    }
    assert len(sdk.__all__) == len(set(sdk.__all__)), "a name listed twice"
    assert set(sdk.__all__) == public


@pytest.mark.parametrize("name", sdk.__all__)
def test_every_exported_name_resolves(name: str) -> None:
    assert getattr(sdk, name) is not None
    namespace: dict[str, object] = {}
    exec(f"from syncworker.destinations import {name}", namespace)
    assert namespace[name] is getattr(sdk, name)


def test_the_sdk_is_split_into_its_submodules() -> None:
    here = Path(sdk.__file__).parent
    assert {p.stem for p in here.glob("*.py")} == {"__init__", *SUBMODULES}
    for stem in SUBMODULES:
        assert ast.get_docstring(ast.parse((here / f"{stem}.py").read_text())), stem


def test_the_mappings_are_found() -> None:
    assert {"hubspot", "salesforce", "rd_station", "segment", "webhook"} <= {
        p.stem for p in MAPPINGS
    }


@pytest.mark.parametrize("path", MAPPINGS, ids=lambda p: p.stem)
def test_a_mapping_imports_only_the_sdk(path: Path) -> None:
    """From syncworker only ``syncworker.destinations`` itself; anything else is the stdlib or
    a third-party distribution."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"relative import in {path.name}"
            modules = [node.module or ""]
        elif isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        else:
            continue
        for module in modules:
            top = module.split(".")[0]
            if top == "syncworker":
                assert module == "syncworker.destinations", f"{path.name}: {module}"
                assert isinstance(node, ast.ImportFrom), f"{path.name}: import {module}"
            else:
                assert top != "mappings", f"{path.name}: {module}"  # each mapping stands alone
                installed = top in sys.stdlib_module_names or importlib.util.find_spec(top)
                assert installed, f"{path.name}: {module} is neither stdlib nor installed"
