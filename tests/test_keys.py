"""syncworker/store/keys.py is the one place Redis keys are spelled, each documented."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from syncworker.store import keys

PACKAGE = Path(keys.__file__).resolve().parents[1]
KEYS_PY = Path(keys.__file__).resolve()


def test_no_module_but_keys_spells_a_key() -> None:
    literal = re.compile(r"""["']sw:""")
    offenders = [
        f"{path.relative_to(PACKAGE.parent)}:{n}"
        for path in sorted(PACKAGE.rglob("*.py"))
        if path.resolve() != KEYS_PY
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if literal.search(line)
    ]
    assert offenders == [], "import the key from syncworker.store.keys"


def test_every_constant_and_builder_is_documented() -> None:
    body = ast.parse(KEYS_PY.read_text()).body
    constants = 0
    for i, node in enumerate(body):
        if isinstance(node, ast.FunctionDef):
            assert ast.get_docstring(node), node.name
            continue
        if not isinstance(node, ast.Assign | ast.AnnAssign):
            continue
        targets = node.targets if isinstance(node, ast.Assign) else [node.target]
        (target,) = targets
        assert isinstance(target, ast.Name)
        constants += 1
        after = body[i + 1] if i + 1 < len(body) else None
        assert (
            isinstance(after, ast.Expr)
            and isinstance(after.value, ast.Constant)
            and isinstance(after.value.value, str)
        ), f"{target.id} has no docstring"
        value = getattr(keys, target.id)
        if isinstance(value, str) and value.startswith(("sw:", "rq:")):
            doc = after.value.value
            assert "Owner" in doc and "TTL" in doc, f"{target.id}: say its owner and TTL"
    assert constants >= 25


def test_the_key_strings_are_those_deployments_hold() -> None:
    assert {
        name: value
        for name, value in vars(keys).items()
        if name.isupper() and isinstance(value, str)
    } == {
        "INGEST": "syncworker-ingest",
        "DELIVER": "syncworker-deliver",
        "RQ_QUEUES": "rq:queues",
        "RQ_JOB": "rq:job:",
        "STATS": "sw:stats",
        "INBOX": "sw:inbox",
        "INBOX_GROUP": "ingest",
        "INBOX_QUEUED": "sw:inbox:queued",
        "INBOX_TRIES": "sw:inbox:alone",
        "QUARANTINE": "sw:quarantine",
        "QUARANTINE_BYTES": "sw:quarantine:bytes",
        "NONCE": "sw:nonce:",
        "CONTACT": "sw:c:",
        "CONTACT_COUNT": "sw:contacts:n",
        "EVENT": "sw:ev:",
        "PENDING": "sw:pending:",
        "FORGOTTEN": "sw:forgotten:",
        "HISTORY": "sw:h:",
        "SYNC": "sw:sync:",
        "CONFIRMED": "sw:confirmed:",
        "DEDUPE": "sw:k:",
        "CONTACTS": "sw:contacts",
        "INFLIGHT": "sw:inflight:",
        "ATTEMPTS": "sw:attempts:",
        "DEAD": "sw:dead:",
        "PAUSE": "sw:pause:",
        "TAKERS": "sw:takers:",
        "TAKEN": "sw:taken:",
        "DSTATS": "sw:dstats:",
        "BREAKER": "sw:breaker:",
        "RATE": "sw:rate:",
        "RECONCILE": "sw:reconcile:",
    }
    assert keys.taken_key("hubspot", "j1") == "sw:taken:hubspot:j1"
    assert keys.nonce_key("svix", "ab") == "sw:nonce:svix:ab"
    assert keys.rq_queue(keys.INGEST) == "rq:queue:syncworker-ingest"
    assert keys.rq_job("j1") == "rq:job:j1"
    assert keys.rq_worker("w") == "rq:worker:w"
    assert keys.rq_execution("j:e") == "rq:execution:j:e"
    assert keys.rq_scheduler("s") == "rq:scheduler:s"


def test_rq_keys_are_rqs() -> None:
    from rq import Queue, Worker
    from rq.job import Job

    assert keys.rq_queue("q") == Queue.redis_queue_namespace_prefix + "q"
    assert keys.RQ_QUEUES == Queue.redis_queues_keys
    assert keys.rq_job("j") == Job.key_for("j")
    assert keys.rq_worker("w") == Worker.redis_worker_namespace_prefix + "w"
