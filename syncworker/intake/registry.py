"""ESP slug -> parser class. A new ESP module is added here and to the README's ESP table."""

from __future__ import annotations

from syncworker.intake.base import EspParser

ESP_PARSERS: dict[str, type[EspParser]] = {}
