"""Operator work on the ledger: reconcile (backfill), import/export, erasure and quarantine
replay."""
