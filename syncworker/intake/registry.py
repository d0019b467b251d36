"""ESP slug -> parser class, found by importing every module in ``syncworker/intake/esps/``.

A module there defines one EspParser subclass whose ``esp`` equals the module name; adding the
module is all it takes to register it (plus its README rows and its test signer).
"""

from __future__ import annotations

import importlib
import pkgutil

from syncworker.intake import esps
from syncworker.intake.contract import EspParser


def discover() -> dict[str, type[EspParser]]:
    found: dict[str, type[EspParser]] = {}
    for info in sorted(pkgutil.iter_modules(esps.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{esps.__name__}.{info.name}")
        parsers = [
            obj
            for obj in vars(module).values()
            if isinstance(obj, type)
            and issubclass(obj, EspParser)
            and obj.__module__ == module.__name__
            and "esp" in vars(obj)
        ]
        if len(parsers) != 1 or parsers[0].esp != info.name:
            raise ImportError(
                f"{module.__name__} must define one EspParser subclass with esp = {info.name!r}"
            )
        found[info.name] = parsers[0]
    return found


ESP_PARSERS: dict[str, type[EspParser]] = discover()
