"""Loopback emulators of destinations added to mappings/ (see docs/adding-a-destination.md);
those of the destinations syncworker ships are in syncworker/devkit/emulators/."""
