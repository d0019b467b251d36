"""The floor the intake benchmark compares against: Flask that parses the JSON body and says 200."""

from __future__ import annotations

from flask import Flask, request

app = Flask(__name__)


@app.post("/webhooks/<source>")
def receive(source: str) -> tuple[dict[str, bool], int]:
    request.get_json(force=True)
    return {"ok": True}, 200
