"""Where mapping modules come from: the project's ``mappings/`` directory, as package ``mappings``.

syncworker does not install a top-level ``mappings`` package (a name other distributions may
use too). The mapping modules stay in the project's ``mappings/`` directory and are loaded from
there explicitly: ``SYNCWORKER_MAPPINGS_DIR`` when set, else ``mappings/`` in the working
directory, else the ``mappings/`` of the source checkout this ``syncworker`` package is imported
from (an editable install). That directory becomes the package ``mappings`` in ``sys.modules``,
so ``import mappings.hubspot`` (in a test) and :func:`destination_class` give the same module
object. A ``mappings`` package imported from anywhere else is refused, never used.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import os
import sys
import threading
from pathlib import Path
from types import ModuleType

from syncworker.destinations.interface import Destination
from syncworker.errors import ConfigError, NotConfigured

PACKAGE = "mappings"
DIR_SETTING = "SYNCWORKER_MAPPINGS_DIR"
_lock = threading.Lock()


def mappings_dir(configured: str | os.PathLike[str] | None = None) -> Path:
    """The directory of the mapping modules: ``configured``, else ``SYNCWORKER_MAPPINGS_DIR``,
    else ``./mappings``, else the ``mappings/`` beside the syncworker package of a source
    checkout (the directory holding ``pyproject.toml``)."""
    chosen = str(configured or "") or os.environ.get(DIR_SETTING, "").strip()
    if chosen:
        return Path(chosen).expanduser().resolve()
    here = Path.cwd() / PACKAGE
    checkout = Path(__file__).resolve().parents[2]
    if not here.is_dir() and (checkout / "pyproject.toml").is_file():
        return (checkout / PACKAGE).resolve()
    return here.resolve()


def mappings_package(directory: str | os.PathLike[str] | None = None) -> ModuleType:
    """The package ``mappings`` for :func:`mappings_dir`: the one already imported if it is that
    directory's, else loaded from it. Any other ``mappings`` already imported is a ConfigError."""
    where = mappings_dir(directory)
    if not where.is_dir():
        raise ConfigError([f"no mappings directory {where} (set {DIR_SETTING})"])
    with _lock:
        loaded = sys.modules.get(PACKAGE)
        if loaded is not None:
            paths = [Path(p).resolve() for p in getattr(loaded, "__path__", None) or ()]
            if where in paths:
                return loaded
            found = paths[0] if paths else getattr(loaded, "__file__", None) or "a module"
            raise ConfigError(
                [
                    f"another package named {PACKAGE!r} is already imported (from {found}); "
                    f"the mapping modules are in {where} ({DIR_SETTING})"
                ]
            )
        init = where / "__init__.py"
        if init.is_file():
            spec = importlib.util.spec_from_file_location(
                PACKAGE, init, submodule_search_locations=[str(where)]
            )
        else:  # a plain directory of modules: a package without an __init__.py
            spec = importlib.machinery.ModuleSpec(PACKAGE, None, is_package=True)
            spec.submodule_search_locations = [str(where)]
        if spec is None:  # pragma: no cover - spec_from_file_location of an existing .py
            raise ConfigError([f"cannot load {init}"])
        module = importlib.util.module_from_spec(spec)
        sys.modules[PACKAGE] = module
        try:
            if spec.loader is not None:
                spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[PACKAGE]
            raise
        return module


def destination_class(
    name: str, directory: str | os.PathLike[str] | None = None
) -> type[Destination]:
    """Import ``mappings.<name>`` from the mappings directory; return its Destination subclass
    named ``name``."""
    if not name.isidentifier():
        raise ConfigError([f"destination {name!r} is not a valid module name"])
    package = mappings_package(directory)
    try:
        module = importlib.import_module(f"{PACKAGE}.{name}")
    except ModuleNotFoundError as exc:
        if exc.name == f"{PACKAGE}.{name}":
            where = Path(package.__path__[0])
            message = f"destination {name!r}: no module mappings/{name}.py (looked in {where})"
            raise ConfigError([message]) from None
        raise NotConfigured([f"destination {name!r} needs a package: {exc.name}"]) from None
    found = [
        obj
        for obj in vars(module).values()
        if isinstance(obj, type)
        and issubclass(obj, Destination)
        and obj is not Destination
        and getattr(obj, "name", None) == name
    ]
    if len(found) != 1:
        raise ConfigError([f"mappings/{name}.py must define one Destination with name = {name!r}"])
    return found[0]
