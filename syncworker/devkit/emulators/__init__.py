"""Loopback emulators of destination APIs, shared by mapping, end-to-end, fault and bench runs."""

from __future__ import annotations

from syncworker.devkit.emulators.base import Emulator, Request, Response
from syncworker.devkit.emulators.hubspot import HubSpotEmulator
from syncworker.devkit.emulators.segment import SegmentEmulator
from syncworker.devkit.emulators.webhook_receiver import WebhookReceiver, new_secret, sign

__all__ = [
    "Emulator",
    "HubSpotEmulator",
    "Request",
    "Response",
    "SegmentEmulator",
    "WebhookReceiver",
    "new_secret",
    "sign",
]
