"""docs/adding-an-esp.md stays true.

Its worked example (the module, the signer and the tests shown for the fictional ESP acmemail) is
loaded under the names it would ship with and run against the real intake: the registry finds
it, every check of tests/intake/test_contract.py passes on it, it verifies a request signed the
way the prose says and refuses forged ones, its sample payload yields the events the doc's table
lists, and one bad item is quarantined without its siblings. The configuration lines pass the
real settings check, and each path, Python name, setting and command the doc quotes exists.
"""

from __future__ import annotations

import builtins
import hashlib
import hmac
import importlib
import importlib.util
import inspect
import itertools
import logging
import re
import shlex
import subprocess
import sys
import textwrap
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import click
import marshmallow
import orjson
import pytest
from marshmallow import Schema
from marshmallow import fields as marshmallow_fields

from syncworker import config, errors, events
from syncworker.bootstrap import load_settings
from syncworker.cli import main as cli
from syncworker.config import OPTIONS, PREFIX, SourceConfig
from syncworker.errors import ConfigError, SignatureInvalid
from syncworker.events import HygieneEvent, Kind
from syncworker.intake import contract, fastload, fields, registry
from syncworker.intake import esps as esps_package
from syncworker.intake.auth import basic, nonces, sns
from syncworker.intake.auth import standard_webhooks as standard_webhooks_auth
from syncworker.intake.contract import (
    EspParser,
    InboundRequest,
    ParseResult,
    Quarantined,
    invalid_reason,
)
from syncworker.intake.esps import standard_webhooks as standard_webhooks_esp
from syncworker.intake.fastload import loader
from syncworker.intake.registry import ESP_PARSERS
from tests.intake import signing
from tests.intake import test_contract as contract_suite
from tests.intake.signing import EspSigner, request

ROOT = Path(__file__).resolve().parents[2]
DOC = (ROOT / "docs" / "adding-an-esp.md").read_text()
SLUG = "acmemail"
MODULE = f"syncworker.intake.esps.{SLUG}"
SIGNER = f"tests.intake.signers.{SLUG}"
EXAMPLE_TESTS = "tests.intake.doc_example_test_acmemail"  # never collected by pytest itself
# the files of a new ESP are named after its slug; the doc's are checked on an ESP that ships
SHIPPED = "mailtrap"
TIMESTAMP_HEADER, SIGNATURE_HEADER = "X-Acme-Timestamp", "X-Acme-Signature"
SECRET, OLD_SECRET = "doc-test-signing-secret", "doc-test-previous-secret"
NOW = 1717172400  # the parser's clock: the sample's deliveries are signed at this time
TOLERANCE_S = 300

FENCE = re.compile(r"^( *)```(\w*)\n(.*?)^\1```$", re.S | re.M)
CALL = re.compile(r"^(?:self\.)?([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*)(?:\(.*\))?$")
PATH = re.compile(r"^[\w.<>-]+(?:/[\w.<>-]*)+$|^[\w<>-]+\.(?:py|md|json|toml)$")
ENV = re.compile(r"^SYNCWORKER_[A-Z0-9_<>]+")
PLACEHOLDER_ENV = re.compile(r"^SYNCWORKER_<[A-Z]+>_<[A-Z]+>(?:_PREVIOUS)?$")
QUOTED = re.compile(r'"([^"\\]*)"')


# -- what the doc holds ------------------------------------------------------------------------


def fenced(lang: str) -> list[str]:
    """The code blocks of ``lang``, dedented (a block may sit in a list item)."""
    return [textwrap.dedent(m.group(3)) for m in FENCE.finditer(DOC) if m.group(2) == lang]


def example_files() -> dict[str, str]:
    """The Python blocks that open with the comment ``# <path>.py``: path -> code."""
    found: dict[str, str] = {}
    for code in fenced("python"):
        first = code.splitlines()[0]
        if first.startswith("# ") and first.endswith(".py"):
            found[first[2:]] = code
    return found


FILES = example_files()
MODULE_PATH = f"syncworker/intake/esps/{SLUG}.py"
SIGNER_PATH = f"tests/intake/signers/{SLUG}.py"
TESTS_PATH = f"tests/intake/test_{SLUG}.py"


def sample_body() -> bytes:
    [sample] = fenced("json")
    return sample.encode()


def table_rows() -> list[tuple[str, Kind, str, float]]:
    """The doc's table of the events the sample yields: (address, kind, key, occurred_at)."""
    lines = DOC.splitlines()
    start = lines.index("| address | kind | key | occurred_at |")
    rows: list[tuple[str, Kind, str, float]] = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        email, kind, key, occurred_at = (c.strip().strip("`") for c in line.strip("|").split("|"))
        rows.append((email, Kind(kind), key, float(occurred_at)))
    return rows


def prose_spans() -> list[str]:
    """Every backticked span outside the code blocks, with line breaks as spaces."""
    prose = FENCE.sub("", DOC)
    return [" ".join(span.split()) for span in re.findall(r"`([^`]+)`", prose)]


# -- the example, loaded under the names it would ship with --------------------------------------


@dataclass(frozen=True)
class Example:
    module: ModuleType
    parser: type[EspParser]
    signer: ModuleType
    tests: ModuleType
    root: Path

    def make(self, **values: str) -> EspParser:
        source = SourceConfig(name=SLUG, esp=SLUG, values={"SIGNING_SECRET": SECRET, **values})
        return self.parser(source, clock=lambda: NOW)


def load(name: str, path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def example(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Example]:
    root = tmp_path_factory.mktemp("doc_example")
    assert sorted(FILES) == sorted([MODULE_PATH, SIGNER_PATH, TESTS_PATH])
    for path, code in FILES.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(code)
    (root / "tests" / "payloads" / SLUG).mkdir(parents=True)
    (root / "tests" / "payloads" / SLUG / "batch.json").write_bytes(sample_body())
    try:
        module = load(MODULE, root / MODULE_PATH)
        parsers = [
            obj
            for obj in vars(module).values()
            if isinstance(obj, type) and issubclass(obj, EspParser) and obj.__module__ == MODULE
        ]
        assert len(parsers) == 1, parsers
        signer = load(SIGNER, root / SIGNER_PATH)
        tests = load(EXAMPLE_TESTS, root / TESTS_PATH)
        yield Example(module, parsers[0], signer, tests, root)
    finally:
        for name in (MODULE, SIGNER, EXAMPLE_TESTS):
            sys.modules.pop(name, None)


@pytest.fixture()
def shipped(example: Example, monkeypatch: pytest.MonkeyPatch) -> Example:
    """The example as if its files were in the tree: in ESP_PARSERS, with its signer and sample."""
    signing.signers()  # the real signers are found first; this one is only added
    monkeypatch.setitem(ESP_PARSERS, SLUG, example.parser)
    monkeypatch.setitem(signing.SIGNERS, SLUG, example.signer.signer)
    monkeypatch.setattr(signing, "PAYLOADS", example.root / "tests" / "payloads")
    return example


def signed(body: bytes, secret: str = SECRET, timestamp: int = NOW) -> dict[str, str]:
    """The headers of a delivery as the doc describes them, computed here, not by the example."""
    ts = str(timestamp)
    digest = hmac.new(secret.encode(), ts.encode() + body, hashlib.sha256).hexdigest()
    return {TIMESTAMP_HEADER: ts, SIGNATURE_HEADER: digest}


def received(example: Example, body: bytes) -> ParseResult:
    parser = example.make()
    parser.verify(request(body, signed(body)))
    return parser.parse(body)


def as_rows(result: ParseResult) -> list[tuple[str, Kind, str, float]]:
    return [(e.email, e.kind, e.key, e.occurred_at) for e in result.events]


# -- the module --------------------------------------------------------------------------------


def test_the_example_is_an_esp_parser_named_for_its_module(example: Example) -> None:
    assert issubclass(example.parser, EspParser)
    assert example.parser.esp == SLUG == Path(MODULE_PATH).stem
    assert example.parser.settings == ("SIGNING_SECRET",)
    assert example.parser.verification


def test_the_registry_discovers_the_example(
    example: Example, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Adding the file is all it takes: the registry's own discovery finds and accepts it."""
    folder = str(example.root / Path(MODULE_PATH).parent)
    monkeypatch.setattr(esps_package, "__path__", [*esps_package.__path__, folder])
    found = registry.discover()
    assert found[SLUG] is example.parser
    assert {k: v for k, v in found.items() if k != SLUG} == ESP_PARSERS


CONTRACT_CHECKS = sorted(
    name
    for name, value in vars(contract_suite).items()
    if name.startswith("test_") and inspect.isfunction(value)
)


def contract_cases(check: Callable[..., None], signer: EspSigner) -> list[dict[str, Any]]:
    """The arguments pytest would call ``check`` with for this ESP: its signer, and every value of
    each parametrize mark."""
    pools: dict[str, list[Any]] = {"signer": [signer]}
    for mark in getattr(check, "pytestmark", []):
        if mark.name == "parametrize":
            names, values = mark.args[0], mark.args[1]
            assert "," not in names, f"teach contract_cases the parameters {names}"
            pools[names] = list(values)
    params = list(inspect.signature(check).parameters)
    unknown = [p for p in params if p not in pools]
    assert not unknown, f"teach contract_cases the fixtures {unknown} of {check.__name__}"
    combos = itertools.product(*(pools[p] for p in params))
    return [dict(zip(params, combo, strict=True)) for combo in combos]


@pytest.mark.parametrize("check", CONTRACT_CHECKS)
def test_the_example_keeps_the_intake_contract(check: str, shipped: Example) -> None:
    """Each check of tests/intake/test_contract.py, run on the example with the doc's signer."""
    function = getattr(contract_suite, check)
    signer = signing.signer_for(SLUG)
    for kwargs in contract_cases(function, signer):
        function(**kwargs)


def test_the_declaration_shown_first_is_the_modules() -> None:
    """The snippet of section 2 is the example's class head, comments aside."""
    [snippet] = [code for code in fenced("python") if code.startswith("class ")]
    module_lines = {line.rstrip() for line in FILES[MODULE_PATH].splitlines()}
    for line in snippet.splitlines():
        statement = line.split("  # ")[0].rstrip()
        assert statement in module_lines, statement


# -- verify ------------------------------------------------------------------------------------


def test_a_request_signed_as_the_doc_says_is_verified(example: Example) -> None:
    body = sample_body()
    for header in (TIMESTAMP_HEADER, SIGNATURE_HEADER, "HMAC-SHA256", "hex"):
        assert header in DOC
    example.make().verify(request(body, signed(body)))
    example.make().verify(request(body, signed(body, timestamp=NOW - TOLERANCE_S + 1)))
    # the doc's signer signs the same way
    assert example.signer.sign_acmemail(body, SECRET, NOW) == signed(body)


FORGERIES: dict[str, Callable[[bytes], tuple[bytes, dict[str, str]]]] = {
    "another secret": lambda body: (body, signed(body, secret="not-the-secret")),
    "body changed after signing": lambda body: (body.replace(b"hard", b"soft"), signed(body)),
    "timestamp changed after signing": lambda body: (
        body,
        {**signed(body), TIMESTAMP_HEADER: str(NOW + 1)},
    ),
    "older than the skew": lambda body: (body, signed(body, timestamp=NOW - TOLERANCE_S - 1)),
    "later than the skew": lambda body: (body, signed(body, timestamp=NOW + TOLERANCE_S + 1)),
    "unsigned": lambda body: (body, {}),
    "no timestamp": lambda body: (body, {SIGNATURE_HEADER: signed(body)[SIGNATURE_HEADER]}),
    "timestamp not a number": lambda body: (body, {**signed(body), TIMESTAMP_HEADER: "soon"}),
    "signature not ASCII": lambda body: (body, {**signed(body), SIGNATURE_HEADER: "é" * 64}),
    "signature of the body alone": lambda body: (
        body,
        {
            TIMESTAMP_HEADER: str(NOW),
            SIGNATURE_HEADER: hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest(),
        },
    ),
}


@pytest.mark.parametrize("forgery", sorted(FORGERIES))
def test_a_forged_request_is_refused(example: Example, forgery: str) -> None:
    body, headers = FORGERIES[forgery](sample_body())
    with pytest.raises(SignatureInvalid) as exc:
        example.make().verify(request(body, headers))
    assert exc.value.status == 401


def test_the_previous_secret_is_accepted_while_rotating(example: Example) -> None:
    body = sample_body()
    rotating = example.make(SIGNING_SECRET_PREVIOUS=OLD_SECRET)
    rotating.verify(request(body, signed(body, secret=OLD_SECRET)))
    rotating.verify(request(body, signed(body)))
    with pytest.raises(SignatureInvalid):
        example.make().verify(request(body, signed(body, secret=OLD_SECRET)))


# -- parse -------------------------------------------------------------------------------------


def test_the_sample_yields_the_events_of_the_docs_table(example: Example) -> None:
    rows = table_rows()
    assert {kind for _, kind, _, _ in rows} >= {
        Kind.HARD_BOUNCE,
        Kind.UNSUBSCRIBE,
        Kind.SPAM_COMPLAINT,
    }
    result = received(example, sample_body())
    assert as_rows(result) == rows
    assert result.ignored == Counter(delivered=1)
    assert result.quarantined == []
    assert all((e.source, e.esp) == (SLUG, SLUG) for e in result.events)
    assert all(isinstance(e.raw, dict) and e.raw["id"] in e.key for e in result.events)
    # the signer's sample names the same kinds, for the end-to-end test
    name, kinds = example.signer.signer().sample
    assert f"tests/payloads/{SLUG}/{name}.json" in DOC
    assert kinds == Counter(kind.value for _, kind, _, _ in rows)


def break_address(items: list[Any]) -> None:
    items[1]["email"] = "not an address"


def break_time(items: list[Any]) -> None:
    items[1]["timestamp"] = "soon"


def break_code(items: list[Any]) -> None:
    del items[1]["event"]


def break_shape(items: list[Any]) -> None:
    items[1] = "not an object"


# the reason the doc quotes for an invalid address, and the others, as the contract words them
DOC_REASON = re.search(r"the reason `(invalid: [^`]+)`", DOC)
BREAKAGES: dict[str, tuple[Callable[[list[Any]], None], str]] = {
    "invalid address": (break_address, DOC_REASON.group(1) if DOC_REASON else "(not in the doc)"),
    "invalid time": (break_time, invalid_reason({"timestamp": ["Not a valid number."]})),
    "no event code": (break_code, "event code missing"),
    "not an object": (break_shape, "event is not an object"),
}


@pytest.mark.parametrize("breakage", sorted(BREAKAGES))
def test_an_invalid_item_is_quarantined_without_its_siblings(
    example: Example, breakage: str
) -> None:
    items = orjson.loads(sample_body())
    breaking, reason = BREAKAGES[breakage]
    breaking(items)
    result = received(example, orjson.dumps(items))
    assert as_rows(result) == [row for i, row in enumerate(table_rows()) if i != 1]
    assert result.quarantined == [Quarantined(reason, items[1])]
    assert result.ignored == Counter(delivered=1)


def test_each_event_raw_parses_back_to_the_same_event(example: Example) -> None:
    parser = example.make()
    result = received(example, sample_body())
    for event in result.events:
        again = parser.parse_item(orjson.loads(orjson.dumps(event.raw)))
        assert again.events == [event]
        assert not again.ignored and not again.quarantined


def test_the_schemas_take_the_fast_path(example: Example) -> None:
    schemas: dict[str, Schema] = example.module.SCHEMAS
    assert schemas
    for item in orjson.loads(sample_body()):
        schema = schemas.get(item["event"])
        if schema is None:
            continue
        fast = loader(schema)
        assert fast is not None, item["event"]
        assert fast(item) == schema.load(item)


def test_the_example_logs_nothing(example: Example, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG):
        received(example, sample_body())
        with pytest.raises(SignatureInvalid):
            example.make().verify(request(sample_body(), {}))
    assert caplog.records == []


def test_the_example_tests_pass(shipped: Example) -> None:
    checks = {
        name: value
        for name, value in vars(shipped.tests).items()
        if name.startswith("test_") and inspect.isfunction(value)
    }
    assert checks
    for name, check in checks.items():
        assert not inspect.signature(check).parameters, f"{name} takes fixtures"
        check()


@pytest.mark.parametrize("path", sorted(FILES))
def test_the_example_code_is_lint_clean(path: str) -> None:
    """ruff, with the project's settings, as if the file were in the tree."""
    # the files are not in the tree, so ruff cannot tell by itself that their imports are ours
    first_party = "lint.isort.known-first-party = ['syncworker', 'tests']"
    for command in (
        ["check", "--config", first_party, "--stdin-filename", path, "-"],
        ["format", "--check", "--stdin-filename", path, "-"],
    ):
        done = subprocess.run(
            [sys.executable, "-m", "ruff", *command],
            input=FILES[path],
            capture_output=True,
            text=True,
            cwd=ROOT,
            check=False,
        )
        assert done.returncode == 0, done.stdout + done.stderr


# -- configuration -----------------------------------------------------------------------------


def doc_environment() -> dict[str, str]:
    """The ``export`` lines of the doc's shell block, as an environment."""
    [block] = fenced("sh")
    environ: dict[str, str] = {}
    for line in block.splitlines():
        words = shlex.split(line, comments=True)
        if words and words[0] == "export":
            for word in words[1:]:
                key, _, value = word.partition("=")
                environ[key] = value
    return environ


def test_the_configuration_lines_pass_the_settings_check(
    example: Example, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(ESP_PARSERS, SLUG, example.parser)
    environ = doc_environment()
    settings = load_settings(environ)
    ours = {name: s for name, s in settings.sources.items() if s.esp == SLUG}
    assert sorted(ours) == [SLUG, f"{SLUG}_eu"]
    assert ours[SLUG].secrets("SIGNING_SECRET") == [
        environ[f"{PREFIX}ACMEMAIL_SIGNING_SECRET"],
        environ[f"{PREFIX}ACMEMAIL_SIGNING_SECRET_PREVIOUS"],
    ]
    # the check is real: a misspelt key stops startup
    with pytest.raises(ConfigError):
        load_settings({**environ, f"{PREFIX}ACMEMAIL_SIGNING_SECRT": "x"})


def setting_exists(key: str, example: Example) -> bool:
    """``key`` (after the prefix) is a global setting, or a setting of an ESP's source."""
    if key in {option.env for option in OPTIONS.values()}:
        return True
    parsers = {**ESP_PARSERS, SLUG: example.parser}
    for slug, parser in parsers.items():
        if key.startswith(slug.upper() + "_"):
            rest = key[len(slug) + 1 :]
            own = [*parser.settings, *(k + "_PREVIOUS" for k in parser.settings)]
            if rest in [*own, *parser.optional_settings]:
                return True
    return False


def test_every_setting_the_doc_names_exists(example: Example) -> None:
    named = [m.group(0) for span in prose_spans() if (m := ENV.match(span))]
    assert named
    wrong = [
        key
        for key in named
        if not (
            PLACEHOLDER_ENV.match(key)
            if "<" in key
            else setting_exists(key.removeprefix(PREFIX), example)
        )
    ]
    assert not wrong, wrong


# -- names and paths ---------------------------------------------------------------------------


def shipped_path(span: str) -> Path:
    """Where a path the doc names is, for an ESP that ships; a bare module name is an ESP's."""
    path = span.replace("<slug>", SHIPPED).replace(SLUG, SHIPPED)
    bare_module = "/" not in path and path.endswith(".py")
    return ROOT / (f"syncworker/intake/esps/{path}" if bare_module else path)


def test_every_path_the_doc_names_exists() -> None:
    paths = [span for span in prose_spans() if PATH.match(span)]
    assert "syncworker/intake/contract.py" in paths
    missing = [span for span in paths if not shipped_path(span).exists()]
    assert not missing, missing


def test_every_link_of_the_doc_leads_to_a_file() -> None:
    links = [link for link in re.findall(r"\]\(([^)#]+)\)", DOC) if "://" not in link]
    assert links
    missing = [link for link in links if not (ROOT / "docs" / link).exists()]
    assert not missing, missing


# where a Python name the doc quotes may live; a bare attribute name may be one of HOLDERS'
NAMESPACES: list[Any] = [
    contract,
    errors,
    events,
    fields,
    fastload,
    registry,
    config,
    basic,
    nonces,
    sns,
    standard_webhooks_auth,
    standard_webhooks_esp,
    signing,
    contract_suite,
    marshmallow,
    builtins,
]
HOLDERS: list[Any] = [
    EspParser,
    ParseResult,
    HygieneEvent,
    InboundRequest,
    Quarantined,
    SourceConfig,
    EspSigner,
    marshmallow_fields.Field,
]


def resolves(name: str, example: Example) -> bool:
    head, *rest = name.split(".")
    roots = [getattr(ns, head) for ns in [example.module, *NAMESPACES] if hasattr(ns, head)]
    if not rest:
        roots += [getattr(h, head) for h in [example.parser, *HOLDERS] if hasattr(h, head)]
    else:
        try:
            roots.append(importlib.import_module(head))  # hmac.compare_digest
        except ImportError:
            pass
    for obj in roots:
        try:
            for part in rest:
                obj = getattr(obj, part)
        except AttributeError:
            continue
        return True
    return False


def example_literals() -> set[str]:
    """The strings the example itself uses: quoted in its code, keys and values of its sample."""
    found = {text for code in FILES.values() for text in QUOTED.findall(code)}

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            found.update(value)
            for inner in value.values():
                walk(inner)
        elif isinstance(value, list):
            for inner in value:
                walk(inner)
        elif isinstance(value, str):
            found.add(value)

    walk(orjson.loads(sample_body()))
    return found


def payload_fields() -> set[str]:
    """The field names of every stored ESP payload (the doc may name a shipped ESP's fields)."""
    found: set[str] = set()

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            found.update(value)
            for inner in value.values():
                walk(inner)
        elif isinstance(value, list):
            for inner in value:
                walk(inner)

    for path in sorted((ROOT / "tests" / "payloads").glob("*/*.json")):
        walk(orjson.loads(path.read_bytes()))
    return found


def test_every_python_name_the_doc_names_exists(example: Example) -> None:
    """A span that reads as a Python name is one (in the intake, marshmallow, the example or the
    test support), or a word of the example's payload or code, a kind, a shipped ESP's slug or a
    field of a stored payload."""
    literals = example_literals()
    words = literals | {kind.value for kind in Kind} | set(ESP_PARSERS) | payload_fields()
    checked: list[str] = []
    unknown: list[str] = []
    for span in prose_spans():
        match = CALL.match(span)
        if match is None or ENV.match(span) or PATH.match(span):
            continue
        checked.append(span)
        if span not in words and not resolves(match.group(1), example):
            unknown.append(span)
    assert {"hygiene_items", "validate_items", "EspParser", "SignatureInvalid"} <= set(checked)
    assert not unknown, unknown
    headers = [span for span in prose_spans() if span.startswith("X-")]
    assert headers and set(headers) <= literals, headers


def test_every_command_the_doc_names_exists() -> None:
    commands = [span.split() for span in prose_spans() if span.startswith("syncworker ")]
    assert commands
    for words in commands:
        command: click.Command = cli
        for word in words[1:]:
            if word.startswith("-") or word.isupper() or not isinstance(command, click.Group):
                break
            assert word in command.commands, " ".join(words)
            command = command.commands[word]
