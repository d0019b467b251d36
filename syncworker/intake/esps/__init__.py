"""One module per ESP: its event-code table, payload schema and parser."""
