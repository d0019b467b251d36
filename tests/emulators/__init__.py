"""Loopback emulators of destination APIs, shared by mapping, end-to-end, fault and bench runs."""

from __future__ import annotations

from tests.emulators.base import Emulator, Request, Response
from tests.emulators.hubspot import HubSpotEmulator
from tests.emulators.segment import SegmentEmulator
from tests.emulators.webhook_receiver import WebhookReceiver, new_secret, sign

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
