"""Webhook intake: POST /webhooks/<source> -> verify -> parse -> one RQ ingest job -> 200."""
