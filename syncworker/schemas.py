"""HygieneEventSchema: the queue payload. Only JSON dicts cross the queue; this loads them back."""

from __future__ import annotations

from typing import Any

from marshmallow import EXCLUDE, Schema, fields, post_load, validate

from syncworker.events import HygieneEvent, Kind, normalize_email


class HygieneEventSchema(Schema):
    class Meta:
        unknown = EXCLUDE

    key = fields.String(required=True, validate=validate.Length(min=1, max=200))
    source = fields.String(required=True, validate=validate.Length(min=1, max=64))
    esp = fields.String(required=True, validate=validate.Length(min=1, max=64))
    email = fields.Email(required=True)
    kind = fields.Enum(Kind, by_value=True, required=True)
    occurred_at = fields.Float(required=True, allow_nan=False)
    message_id = fields.String(load_default=None, allow_none=True)
    reason = fields.String(load_default=None, allow_none=True)
    smtp_code = fields.String(load_default=None, allow_none=True)
    list_id = fields.String(load_default=None, allow_none=True)
    raw = fields.Dict(load_default=dict)

    @post_load
    def make_event(self, data: dict[str, Any], **_: Any) -> HygieneEvent:
        data["email"] = normalize_email(data["email"])
        return HygieneEvent(**data)


EVENT_SCHEMA = HygieneEventSchema()
EVENTS_SCHEMA = HygieneEventSchema(many=True)
