"""docs/architecture.md speaks of the code as it is: every Redis key, every Lua script, every
module of the tree, and no path that does not exist."""

from __future__ import annotations

import re
from pathlib import Path

from syncworker.store import keys

ROOT = Path(__file__).resolve().parent.parent
DOC = (ROOT / "docs" / "architecture.md").read_text()


def section(title: str) -> str:
    return DOC.split(f"## {title}", 1)[1].split("\n## ", 1)[0]


def test_every_key_is_in_the_state_model() -> None:
    model = section("The Redis state model")
    for name, value in vars(keys).items():
        if name.startswith("_") or not isinstance(value, str):
            continue
        assert f"| `{name}` | `{value}` |" in model, name
    for name, value in vars(keys).items():
        if callable(value) and getattr(value, "__module__", "") == keys.__name__:
            assert f"| `{name}()` |" in model, name


def test_every_script_is_listed_once() -> None:
    listed = re.findall(r"^\| `(\w+\.lua)` \|", section("The Lua scripts"), re.M)
    files = sorted(p.name for p in (ROOT / "syncworker" / "store" / "lua").glob("*.lua"))
    assert sorted(listed) == files and len(files) >= 10


def test_every_module_is_in_the_tree() -> None:
    tree = section("The tree")
    for path in sorted((ROOT / "syncworker").rglob("*.py")):
        relative = path.relative_to(ROOT / "syncworker")
        if relative.parts[0] == "devkit" and relative.parts[1:2] == ("emulators",):
            continue
        if relative.parts[:2] == ("intake", "esps") or path.name in ("__init__.py", "__main__.py"):
            continue
        name = path.stem
        assert re.search(rf"\b{name}\b", tree), f"syncworker/{relative} is not in the tree"


def test_every_path_named_exists() -> None:
    named = set(re.findall(r"`((?:syncworker|tests|docs|mappings|bench)/[\w./]+)`", DOC))
    named |= set(re.findall(r"\b((?:syncworker|tests)/[\w/]+\.(?:py|lua))\b", DOC))
    assert len(named) > 10
    missing = [p for p in sorted(named) if not (ROOT / p).exists()]
    assert missing == []
