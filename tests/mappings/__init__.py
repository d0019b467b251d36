"""Tests of the mapping modules against their emulators, and the contract they all follow."""
