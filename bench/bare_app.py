"""The floor the intake benchmark compares against: Flask that parses the JSON body and says 200.

It parses with orjson, as syncworker's intake does: the floor is the fastest parse of the body.
"""

from __future__ import annotations

import orjson
from flask import Flask, request

app = Flask(__name__)


@app.post("/webhooks/<source>")
def receive(source: str) -> tuple[dict[str, bool], int]:
    orjson.loads(request.get_data())
    return {"ok": True}, 200
