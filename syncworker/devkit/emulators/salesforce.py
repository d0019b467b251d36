"""Salesforce emulator: OAuth refresh-token grant, SOQL by email, sObject Collections update.

Shapes follow Salesforce's REST API docs: the token answer carries ``access_token`` and
``instance_url`` (this server); errors are JSON arrays ``[{"message", "errorCode"}]``; an expired
or unknown session is 401 INVALID_SESSION_ID; the org's API allocation and the test rate limit
are answered 403 REQUEST_LIMIT_EXCEEDED (Salesforce's throttle signal, not 429) without
Retry-After; every data response carries ``Sforce-Limit-Info: api-usage=used/limit``.
``PATCH /composite/sobjects`` takes at most 200 records and answers 200 with one SaveResult per
record, in order (``allOrNone: true`` rolls every record back when one fails). As the Object
Reference documents, ``EmailBouncedReason`` and ``EmailBouncedDate`` are updatable on Contact and
Lead (``read_only`` stands for field-level security denying them), while ``IsEmailBounced`` is a
read-only Contact field (Leads have none); deriving it from the two bounce fields is this
emulator's choice. The SOQL parser understands only the query shapes the mapping sends (``SELECT
fields FROM Contact|Lead WHERE Email IN (...) [AND IsConverted = false]``); anything else is a
400 MALFORMED_QUERY.
"""

from __future__ import annotations

import copy
import itertools
import re
import time
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl

from syncworker.devkit.emulators.base import Emulator, Request, Response

TOKEN = "/services/oauth2/token"
DATA = re.compile(r"^/services/data/v(?P<version>\d+\.\d)(?P<rest>/.*)$")
QUERY_MORE = re.compile(r"^/query/(?P<cursor>[\w-]+)$")
SOQL = re.compile(
    r"^SELECT (?P<fields>[\w, ]+) FROM (?P<object>Contact|Lead) WHERE Email IN \((?P<emails>.*)\)"
    r"(?P<unconverted> AND IsConverted = false)?$"
)
LITERAL = re.compile(r"'((?:[^'\\]|\\.)*)'")
PREFIX = {"Contact": "003", "Lead": "00Q"}
STANDARD = {"Id", "Email", "HasOptedOutOfEmail", "EmailBouncedReason", "EmailBouncedDate"}
READ_ONLY = {"Id", "Email", "IsEmailBounced", "IsConverted"}  # as far as this emulator goes
OWN_FIELDS = {"Contact": {"IsEmailBounced"}, "Lead": {"IsConverted"}}  # beyond STANDARD
LIMIT = 200
LIMITED = "REQUEST_LIMIT_EXCEEDED"


class SalesforceEmulator(Emulator):
    """``SalesforceEmulator(client_id=..., client_secret=..., refresh_token=...)``.

    Seed with ``seed(email, sobject="Contact", **fields) -> id`` (``converted=True`` for a
    converted Lead); inspect ``records(email)``, ``record(id)``, ``state`` (every record by id),
    ``emails``, ``saves`` (record id -> successful saves: triggers fire on each), ``refreshes``
    and ``api_used``. Tests drive:
    - ``expire_tokens(after=n)``: every session issued so far ends after ``n`` more API calls;
    - ``advance(seconds)``: the emulator's clock; sessions end ``session_ttl`` (2 h, Salesforce's
      default timeout) after they were issued;
    - ``delete(id)``, ``fail_record(id, code, times)``: per-record errors in the next saves;
    - ``api_limit``: the org's 24-hour allocation (``api_used`` counts against it);
    - ``read_only``: fields field-level security denies; ``custom_fields``: ``__c`` checkboxes;
    - ``page_size``: records per query page (``nextRecordsUrl`` beyond it);
    - ``instance=other``: the token answer sends data calls to another emulator.
    """

    def __init__(
        self,
        client_id: str = "sf-client-id",
        client_secret: str = "sf-client-secret",
        refresh_token: str = "sf-refresh-token",
        *,
        api_limit: int = 15_000,
        custom_fields: Iterable[str] = (),
        read_only: Iterable[str] = (),
        page_size: int = 2000,
        instance: SalesforceEmulator | None = None,
        session_ttl: float = 7200.0,
    ) -> None:
        super().__init__()
        self.send_retry_after = False  # Salesforce sends none with REQUEST_LIMIT_EXCEEDED
        self.client_id, self.client_secret = client_id, client_secret
        self.refresh_token = refresh_token
        self.api_limit, self.api_used = api_limit, 0
        self.custom_fields = set(custom_fields)
        self.read_only = READ_ONLY | set(read_only)
        self.page_size = page_size
        self.instance = instance  # the server the token answer sends data calls to (default: self)
        self.refreshes = 0
        self.saves: dict[str, int] = {}
        self.session_ttl = session_ttl
        self._offset = 0.0
        self._tokens: dict[str, float] = {}  # token -> end of its session on the emulator's clock
        self._expire_after: int | None = None
        self._records: dict[str, dict[str, Any]] = {}
        self._deleted: set[str] = set()
        self._failures: dict[str, list[str]] = {}
        self._cursors: dict[str, list[dict[str, Any]]] = {}
        self._ids = itertools.count(1)

    # -- seeding and inspection -----------------------------------------------------------------

    def seed(self, email: str, sobject: str = "Contact", **fields: Any) -> str:
        with self._lock:
            record_id = f"{PREFIX[sobject]}{next(self._ids):012d}AAA"
            record = {"Id": record_id, "Email": email, "HasOptedOutOfEmail": False}
            record |= {"EmailBouncedReason": None, "EmailBouncedDate": None}
            record |= {name: False for name in self.custom_fields}
            if sobject == "Lead":
                record["IsConverted"] = bool(fields.pop("converted", False))
            record.update(fields)
            self._records[record_id] = {"attributes": {"type": sobject}, **record}
            return record_id

    def records(self, email: str) -> list[dict[str, Any]]:
        with self._lock:
            return [
                self._view(r)
                for r in self._records.values()
                if r["Email"].lower() == email.lower() and r["Id"] not in self._deleted
            ]

    def record(self, record_id: str) -> dict[str, Any]:
        with self._lock:
            return self._view(self._records[record_id])

    @property
    def emails(self) -> set[str]:
        with self._lock:
            return {r["Email"].lower() for r in self._records.values()}

    @property
    def state(self) -> dict[str, dict[str, Any]]:
        """Every record by id, as the API would show it (for before/after comparisons)."""
        with self._lock:
            return {i: self._view(r) for i, r in self._records.items() if i not in self._deleted}

    # -- what tests drive -----------------------------------------------------------------------

    def advance(self, seconds: float) -> None:
        """Move the emulator's clock: sessions end ``session_ttl`` after they were issued."""
        with self._lock:
            self._offset += seconds

    def expire_tokens(self, after: int = 0) -> None:
        """Every access token issued so far expires once ``after`` more API calls have passed."""
        with self._lock:
            self._expire_after = after

    def delete(self, record_id: str) -> None:
        with self._lock:
            self._deleted.add(record_id)

    def fail_record(self, record_id: str, code: str = "UNABLE_TO_LOCK_ROW", times: int = 1) -> None:
        """The next ``times`` saves of ``record_id`` fail with ``code`` (a per-record error)."""
        with self._lock:
            self._failures.setdefault(record_id, []).extend([code] * times)

    # -- the HTTP side --------------------------------------------------------------------------

    def authorized(self, request: Request) -> bool:
        if request.path == TOKEN:
            return True  # the token endpoint authenticates the client by its form fields
        header = request.headers.get("authorization", "")
        valid = self._tokens.get(header.removeprefix("Bearer "), 0.0) > time.time() + self._offset
        if valid and self._expire_after is not None:
            if self._expire_after == 0:
                self._tokens.clear()
                self._expire_after = None
                return False
            self._expire_after -= 1
        return valid

    def unauthorized(self, request: Request) -> Response:
        return _errors(401, "INVALID_SESSION_ID", "Session expired or invalid")

    def throttle(self, request: Request, retry_after: int) -> Response:
        return self._limited(_errors(403, LIMITED, "TotalRequests Limit exceeded."))

    def error(self, status: int, request: Request) -> Response:
        if status == 401:
            return self.unauthorized(request)
        return _errors(status, "UNKNOWN_EXCEPTION", "An unexpected error occurred (injected).")

    def handle(self, request: Request) -> Response:
        if request.path == TOKEN and request.method == "POST":
            return self._token(request)
        match = DATA.match(request.path)
        if match is None:
            return _errors(404, "NOT_FOUND", "The requested resource does not exist")
        if float(match["version"]) < 42.0:
            return _errors(404, "NOT_FOUND", "sObject Collections need API version 42.0+")
        if self.api_used >= self.api_limit:
            return self._limited(_errors(403, LIMITED, "TotalRequests Limit exceeded."))
        self.api_used += 1
        rest = match["rest"]
        if rest == "/query" and request.method == "GET":
            response = self._query(request.query.get("q", ""))
        elif (more := QUERY_MORE.match(rest)) and request.method == "GET":
            response = self._page(more["cursor"])
        elif rest == "/composite/sobjects" and request.method == "PATCH":
            response = self._update(request)
        else:
            response = _errors(404, "NOT_FOUND", "The requested resource does not exist")
        return self._limited(response)

    def _limited(self, response: Response) -> Response:
        response.headers["Sforce-Limit-Info"] = f"api-usage={self.api_used}/{self.api_limit}"
        return response

    def _token(self, request: Request) -> Response:
        form = dict(parse_qsl(request.body.decode()))
        client = (form.get("client_id"), form.get("client_secret"))
        if form.get("grant_type") != "refresh_token":
            return _oauth_error("unsupported_grant_type", "grant type not supported")
        if client != (self.client_id, self.client_secret):
            return _oauth_error("invalid_client_id", "client identifier invalid")
        if form.get("refresh_token") != self.refresh_token:
            return _oauth_error("invalid_grant", "expired access/refresh token")
        token = f"00D000000000001!{uuid.uuid4().hex}"
        server = self.instance or self
        server._tokens[token] = time.time() + server._offset + server.session_ttl
        self.refreshes += 1
        body = {
            "access_token": token,
            "signature": uuid.uuid4().hex,
            "scope": "api refresh_token",
            "instance_url": server.url,
            "id": f"{self.url}/id/00D000000000001/005000000000001",
            "token_type": "Bearer",
            "issued_at": str(int(time.time() * 1000)),
        }
        return Response(200, body)

    def _query(self, soql: str) -> Response:
        match = SOQL.match(soql.strip())
        if match is None:
            return _errors(400, "MALFORMED_QUERY", f"unexpected query: {soql[:200]}")
        sobject = match["object"]
        fields = [f.strip() for f in match["fields"].split(",")]
        known = STANDARD | self.custom_fields | OWN_FIELDS[sobject]
        for name in fields:
            if name not in known:
                message = f"No such column '{name}' on entity '{sobject}'."
                return _errors(400, "INVALID_FIELD", message)
        literals = [_unescape(m) for m in LITERAL.findall(match["emails"])]
        wanted = {e.lower() for e in literals}
        views = [
            self._view(r)
            for r in self._records.values()
            if r["attributes"]["type"] == sobject
            and r["Email"].lower() in wanted
            and r["Id"] not in self._deleted
            and not (match["unconverted"] and r.get("IsConverted"))
        ]
        found = [{"attributes": v["attributes"], **{f: v.get(f) for f in fields}} for v in views]
        cursor = uuid.uuid4().hex[:15]
        self._cursors[cursor] = found
        return self._page(cursor)

    def _page(self, cursor: str) -> Response:
        records = self._cursors.get(cursor.split("-")[0])
        if records is None:
            return _errors(400, "INVALID_QUERY_LOCATOR", "invalid query locator")
        start = int(cursor.split("-")[1]) if "-" in cursor else 0
        page = records[start : start + self.page_size]
        done = start + self.page_size >= len(records)
        body: dict[str, Any] = {"totalSize": len(records), "done": done, "records": page}
        if not done:
            base = cursor.split("-")[0]
            body["nextRecordsUrl"] = f"/services/data/v62.0/query/{base}-{start + self.page_size}"
        return Response(200, body)

    def _update(self, request: Request) -> Response:
        body = request.json if isinstance(request.json, dict) else {}
        records = body.get("records")
        if not isinstance(records, list) or not records:
            return _errors(400, "JSON_PARSER_ERROR", "records must be a non-empty list")
        if len(records) > LIMIT:
            message = "record limit reached. cannot submit more than 200 records into this call"
            return _errors(400, "EXCEEDED_ID_LIMIT", message)
        for item in records:
            sobject = (item.get("attributes") or {}).get("type") if isinstance(item, dict) else None
            if sobject not in PREFIX:
                return _errors(400, "INVALID_TYPE", "Must send a concrete entity type.")
            unknown = set(item) - {"attributes", "id"} - STANDARD - self.custom_fields - READ_ONLY
            if unknown:
                message = f"No such column '{sorted(unknown)[0]}' on sobject of type {sobject}"
                return _errors(400, "INVALID_FIELD", message)
        results = [self._check(item) for item in records]
        failed = any(not r["success"] for r in results)
        if body.get("allOrNone") and failed:
            rolled_back = {
                "statusCode": "ALL_OR_NONE_OPERATION_ROLLED_BACK",
                "message": "Record rolled back because not all records were valid and the "
                "request was using AllOrNone header",
                "fields": [],
            }
            results = [
                r
                if not r["success"]
                else {"id": r["id"], "success": False, "errors": [rolled_back]}
                for r in results
            ]
            return Response(200, results)
        for item, result in zip(records, results, strict=True):
            if result["success"]:
                self._save(item)
        return Response(200, results)

    def _check(self, item: dict[str, Any]) -> dict[str, Any]:
        """The SaveResult ``item`` would get (nothing is written here)."""
        record_id = str(item.get("id", ""))
        record = self._records.get(record_id)
        if record is None or record["attributes"]["type"] != item["attributes"]["type"]:
            return _failed(None, "INVALID_CROSS_REFERENCE_KEY", "invalid cross reference id")
        if record_id in self._deleted:
            return _failed(record_id, "ENTITY_IS_DELETED", "entity is deleted")
        if self._failures.get(record_id):
            code = self._failures[record_id].pop(0)
            return _failed(record_id, code, f"{code} (injected)")
        if record.get("IsConverted"):
            message = "cannot reference converted lead"
            return _failed(record_id, "CANNOT_UPDATE_CONVERTED_LEAD", message)
        locked = sorted((set(item) - {"attributes", "id"}) & self.read_only)
        if locked:
            message = (
                f"Unable to create/update fields: {', '.join(locked)}. Please check the security "
                "settings of this field and verify that it is read/write for your profile or "
                "permission set."
            )
            return _failed(record_id, "INVALID_FIELD_FOR_INSERT_UPDATE", message, locked)
        reason = item.get("EmailBouncedReason")
        if isinstance(reason, str) and len(reason) > 255:
            message = "Email Bounced Reason: data value too large"
            return _failed(record_id, "STRING_TOO_LONG", message, ["EmailBouncedReason"])
        return {"id": record_id, "success": True, "errors": []}

    def _save(self, item: dict[str, Any]) -> None:
        record = self._records[item["id"]]
        for name, value in item.items():
            if name in ("attributes", "id"):
                continue
            record[name] = _datetime(value) if name == "EmailBouncedDate" else value
        self.saves[item["id"]] = self.saves.get(item["id"], 0) + 1

    def _view(self, record: dict[str, Any]) -> dict[str, Any]:
        view = copy.deepcopy(record)
        view["attributes"] = self._attributes(record)
        if record["attributes"]["type"] == "Contact":  # read-only; Leads have no such field
            bounced = record.get("EmailBouncedReason") or record.get("EmailBouncedDate")
            view["IsEmailBounced"] = bool(bounced)
        return view

    def _attributes(self, record: dict[str, Any]) -> dict[str, str]:
        sobject = record["attributes"]["type"]
        return {"type": sobject, "url": f"/services/data/v62.0/sobjects/{sobject}/{record['Id']}"}


def _errors(status: int, code: str, message: str) -> Response:
    return Response(status, [{"message": message, "errorCode": code}])


def _oauth_error(error: str, description: str) -> Response:
    return Response(400, {"error": error, "error_description": description})


def _failed(
    record_id: str | None, code: str, message: str, fields: list[str] | None = None
) -> dict[str, Any]:
    result: dict[str, Any] = {"success": False}
    if record_id:
        result["id"] = record_id
    result["errors"] = [{"statusCode": code, "message": message, "fields": fields or []}]
    return result


def _unescape(literal: str) -> str:
    return re.sub(r"\\(.)", r"\1", literal)


def _datetime(value: Any) -> Any:
    """Salesforce stores datetimes and answers them as ``2026-01-01T00:00:00.000+0000``."""
    if not isinstance(value, str):
        return value
    parsed = datetime.fromisoformat(value).astimezone(UTC)
    return parsed.strftime("%Y-%m-%dT%H:%M:%S.") + f"{parsed.microsecond // 1000:03d}+0000"
