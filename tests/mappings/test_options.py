"""Typed options (syncworker/destinations/options.py) and the OAuth token holder (oauth.py)."""

from __future__ import annotations

import json
import threading
from dataclasses import FrozenInstanceError, dataclass
from typing import Any

import pytest
import requests

from syncworker.destinations import (
    BadCredentials,
    ContactChange,
    Destination,
    DestinationConfig,
    HttpClient,
    NotConfigured,
    OAuthToken,
    Options,
    Outcome,
    Secret,
    Throttled,
    Url,
    option,
)


@dataclass(frozen=True)
class AcmeOptions(Options):
    api_key: Secret = option(required=True)
    audiences: tuple[str, ...] = option(required=True)
    endpoint: Url = option("https://api.acme.example")
    region: str = option("us", choices=("us", "eu"))
    max_batch_bytes: int = option(450_000, min=4_000, max=500_000)
    pause: float = option(60.0, check=lambda s: s > 0, expect="seconds, above 0")
    ids: tuple[int, ...] = option()
    create: bool = option(False)
    prefix: str = option("acme-", empty=True)
    field_name: str = option(pattern=r"[a-z_]+__c")


class Acme(Destination):
    name = "acme"
    options: AcmeOptions

    def check(self) -> list[str]:
        if self.options.create and self.options.region == "eu":
            return [f"{self.setting('CREATE')} is not available in the eu region"]
        return []

    def sync(self, changes: list[ContactChange]) -> list[Outcome]:
        return [Outcome.applied() for _ in changes]


def build(**values: str) -> Acme:
    config = DestinationConfig("acme", {"API_KEY": "k", "AUDIENCES": "a", **values})
    return Acme(config, HttpClient("acme", ""))


def test_the_declaration_gives_the_keys_the_configuration_reads() -> None:
    assert Acme.settings == ("API_KEY", "AUDIENCES")
    assert Acme.optional_settings["REGION"] == "us"
    assert Acme.optional_settings["PAUSE"] == "60"
    assert Acme.optional_settings["CREATE"] == "false"
    assert Acme.optional_settings["IDS"] == ""
    assert Acme.secret_settings == {"API_KEY"}


def test_values_are_typed_and_defaults_fill_in() -> None:
    options = build(AUDIENCES=" a, b ,", IDS="1,2", CREATE="Yes", PAUSE="1.5").options
    assert options.audiences == ("a", "b")
    assert options.ids == (1, 2)
    assert options.create is True
    assert options.pause == 1.5
    assert options.max_batch_bytes == 450_000
    assert options.endpoint == "https://api.acme.example"
    with pytest.raises(FrozenInstanceError):
        options.region = "eu"  # type: ignore[misc]


def test_an_empty_value_means_the_default_unless_empty_is_allowed() -> None:
    options = build(REGION="", PREFIX="").options
    assert options.region == "us"
    assert options.prefix == ""
    assert build().options.prefix == "acme-"


def test_every_bad_option_is_listed_at_once_by_its_variable() -> None:
    values = {
        "API_KEY": "",
        "AUDIENCES": " , ",
        "ENDPOINT": "ftp://x",
        "REGION": "mars",
        "MAX_BATCH_BYTES": "big",
        "PAUSE": "0",
        "IDS": "one",
        "CREATE": "maybe",
        "FIELD_NAME": "Drop; table",
    }
    with pytest.raises(NotConfigured) as caught:
        Acme(DestinationConfig("acme", values), HttpClient("acme", ""))
    assert caught.value.problems == [
        "SYNCWORKER_ACME_API_KEY is required by 'acme'",
        "SYNCWORKER_ACME_AUDIENCES is required by 'acme'",
        "SYNCWORKER_ACME_ENDPOINT='ftp://x': expected an http(s) URL",
        "SYNCWORKER_ACME_REGION='mars': expected one of us, eu",
        "SYNCWORKER_ACME_MAX_BATCH_BYTES='big': expected an integer",
        "SYNCWORKER_ACME_PAUSE='0': expected seconds, above 0",
        "SYNCWORKER_ACME_IDS='one': expected a comma list of integers",
        "SYNCWORKER_ACME_CREATE='maybe': expected true or false",
        "SYNCWORKER_ACME_FIELD_NAME='Drop; table': expected matching [a-z_]+__c",
    ]


def test_a_range_and_the_mappings_own_check_join_the_same_list() -> None:
    with pytest.raises(NotConfigured) as caught:
        build(MAX_BATCH_BYTES="600000", REGION="eu", CREATE="true")
    assert caught.value.problems == [
        "SYNCWORKER_ACME_MAX_BATCH_BYTES='600000': expected 4000..500000",
        "SYNCWORKER_ACME_CREATE is not available in the eu region",
    ]


def test_a_bad_secret_is_named_but_never_quoted() -> None:
    @dataclass(frozen=True)
    class Keyed(Options):
        key: Secret = option(check=lambda k: k.startswith("sk_"), expect="an sk_ key")

    _, problems = Keyed.read(DestinationConfig("acme", {"KEY": "hunter2"}))
    assert problems == ["SYNCWORKER_ACME_KEY: expected an sk_ key"]


def test_a_declaration_must_use_option_and_a_known_type() -> None:
    @dataclass(frozen=True)
    class Untyped(Options):
        when: list[str] = option()

    with pytest.raises(TypeError, match="not an option type"):
        Untyped.specs()


def test_settings_are_not_declared_twice() -> None:
    with pytest.raises(TypeError, match="comes from its options"):

        class Twice(Destination):
            name = "twice"
            options: AcmeOptions
            settings = ("API_KEY",)


# -- OAuthToken -----------------------------------------------------------------------------------


class TokenServer(HttpClient):
    """An HttpClient answering from memory: a token endpoint and a data endpoint that accepts
    only the latest token."""

    def __init__(self, token_status: int = 200, expires_in: int | None = None) -> None:
        super().__init__("acme", "https://acme.example")
        self.token_status, self.expires_in = token_status, expires_in
        self.issued: list[str] = []
        self.sent: list[tuple[str, dict[str, Any]]] = []
        self.lock = threading.Lock()

    def request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        with self.lock:
            self.sent.append((path, kwargs))
            if path == "/token":
                if self.token_status != 200:
                    return _response(self.token_status, {"error": "invalid_grant"})
                self.issued.append(f"t{len(self.issued) + 1}")
                body: dict[str, Any] = {"access_token": self.issued[-1]}
                if self.expires_in is not None:
                    body["expires_in"] = self.expires_in
                return _response(200, body)
            valid = f"Bearer {self.issued[-1]}" if self.issued else None
            status = 200 if kwargs["headers"]["Authorization"] == valid else 401
            return _response(status, {"ok": status == 200})


def _response(status: int, body: dict[str, Any]) -> requests.Response:
    response = requests.Response()
    response.status_code = status
    response._content = json.dumps(body).encode()
    return response


CREDENTIALS = {"client_id": "id", "client_secret": "secret"}


def test_client_credentials_are_sent_as_a_form_and_the_token_cached() -> None:
    server = TokenServer()
    token = OAuthToken(server, "/token", CREDENTIALS, grant="client_credentials")
    assert token.request("GET", "/data").status_code == 200
    assert token.request("GET", "/data").status_code == 200
    assert server.issued == ["t1"]
    path, kwargs = server.sent[0]
    assert (path, kwargs["data"]) == ("/token", {"grant_type": "client_credentials", **CREDENTIALS})


def test_a_json_refresh_without_grant_type() -> None:
    server = TokenServer()
    fields = {**CREDENTIALS, "refresh_token": "r"}
    OAuthToken(server, "/token", fields, as_json=True, grant_type=False).token()
    assert server.sent[0][1]["json"] == fields


def test_expiry_less_the_margin_renews_before_the_call() -> None:
    now = [1000.0]
    server = TokenServer(expires_in=3600)
    token = OAuthToken(server, "/token", CREDENTIALS, clock=lambda: now[0])
    token.token()
    assert token.expires_at == 1000.0 + 3600 - 60
    now[0] += 3600 - 60
    assert token.token() == "t2"
    assert all(path == "/token" for path, _ in server.sent)


def test_without_expires_in_the_given_lifetime_or_until_rejected() -> None:
    server = TokenServer()
    assert OAuthToken(server, "/token", CREDENTIALS).expires_at is None
    lived = OAuthToken(server, "/token", CREDENTIALS, lifetime=100, clock=lambda: 0.0)
    lived.token()
    assert lived.expires_at == 90.0  # a tenth of a short lifetime as margin


def test_a_401_renews_once_and_repeats_the_call() -> None:
    server = TokenServer()
    token = OAuthToken(server, "/token", CREDENTIALS)
    token.token()
    server.issued.append("rotated elsewhere")  # the cached token is no longer accepted
    assert token.request("GET", "/data", allow=(404,)).status_code == 200
    assert [p for p, _ in server.sent] == ["/token", "/data", "/token", "/data"]


def test_a_second_401_is_bad_credentials() -> None:
    server = TokenServer()
    token = OAuthToken(server, "/token", CREDENTIALS)
    server.issued.append("never handed out")
    token.token = lambda: "stale"  # type: ignore[method-assign]
    with pytest.raises(BadCredentials) as caught:
        token.request("GET", "/data")
    assert caught.value.status == 401


def test_a_refused_refresh_is_bad_credentials_or_what_check_raises() -> None:
    with pytest.raises(BadCredentials) as caught:
        OAuthToken(TokenServer(token_status=400), "/token", CREDENTIALS).token()
    assert (caught.value.status, "invalid_grant" in caught.value.body) == (400, True)

    def limited(response: requests.Response) -> None:
        raise Throttled("acme", 60.0, status=response.status_code)

    with pytest.raises(Throttled):
        OAuthToken(TokenServer(token_status=403), "/token", CREDENTIALS, check=limited).token()


def test_threads_rejected_together_share_one_refresh() -> None:
    server = TokenServer()
    token = OAuthToken(server, "/token", CREDENTIALS)
    token.token()
    server.issued.append("rotated elsewhere")
    barrier = threading.Barrier(8)
    statuses: list[int] = []

    def call() -> None:
        barrier.wait()
        statuses.append(token.request("GET", "/data").status_code)

    threads = [threading.Thread(target=call) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert statuses == [200] * 8
    assert len(server.issued) == 3  # t1, the rotation, and exactly one refresh
