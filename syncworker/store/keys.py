"""Every Redis key syncworker reads or writes, in one place.

Each key is a constant (a name, or a prefix that a destination name, an address or an id
completes) or a function that builds it, documented with its Redis type, its owner (the module
that writes it), its TTL and what it holds. The strings are the ones deployed Redis databases
hold: changing one orphans that data.

The Lua scripts (syncworker/store/lua/) receive their keys from the callers, except the record
library (``_record.lua``), which converts the old ledger layout and names the keys of an address
in it from the prefixes below; tests/test_keys.py checks that its copies equal these.
"""

from __future__ import annotations

from typing import Final

# -- queues (RQ) ---------------------------------------------------------------------------------

INGEST: Final = "syncworker-ingest"
"""RQ queue name of ingest jobs (its list is ``rq:queue:syncworker-ingest``, see
:func:`rq_queue`). Owner: syncworker/queue/enqueue.py. Jobs apply the inbox to the ledger."""

DELIVER: Final = "syncworker-deliver"
"""RQ queue name of deliver jobs (``rq:queue:syncworker-deliver``). Owner:
syncworker/delivery/loop.py. Jobs send a destination's pending contacts."""

QUEUES: Final = (INGEST, DELIVER)
"""Both queue names, in the order workers listen to them."""


def rq_queue(name: str) -> str:
    """List ``rq:queue:<name>``: the ids of RQ queue ``name``'s jobs waiting to run. Owner: RQ
    (and the enqueue script, which pushes ingest job ids). No TTL."""
    return f"rq:queue:{name}"


RQ_QUEUES: Final = "rq:queues"
"""Set of every RQ queue's key. Owner: RQ (and the enqueue script). No TTL."""

RQ_JOB: Final = "rq:job:"
"""Hash ``rq:job:<id>``: an RQ job (RQ's own layout; the enqueue script writes ingest jobs in
it). Owner: RQ. TTL: RQ's (``result_ttl``, ``failure_ttl``)."""


def rq_job(job_id: str) -> str:
    """The hash of RQ job ``job_id`` (:data:`RQ_JOB`)."""
    return f"{RQ_JOB}{job_id}"


def rq_worker(name: str) -> str:
    """Hash ``rq:worker:<name>``: an RQ worker's hostname, pid and last heartbeat. Owner: RQ.
    TTL: RQ's worker TTL, renewed by each heartbeat. Read to tell live workers from dead."""
    return f"rq:worker:{name}"


def rq_execution(member: str) -> str:
    """Hash ``rq:execution:<job id>:<execution id>``: one run of a job (its worker). Owner: RQ.
    TTL: RQ's."""
    return f"rq:execution:{member}"


def rq_scheduler(name: str) -> str:
    """Hash ``rq:scheduler:<name>``: an RQ scheduler's hostname, pid and heartbeat. Owner: RQ.
    TTL: RQ's."""
    return f"rq:scheduler:{name}"


# -- intake ----------------------------------------------------------------------------------------

STATS: Final = "sw:stats"
"""Hash of counters shared by every process. Owner: the intake (``in:<source>:<code>``,
syncworker/queue/enqueue.py), the ledger (``ledger:<effect>``, ``ledger:failed``), the
quarantine (``quarantined``, ``quarantine_dropped``), the workers (``jobs_failed:<queue>``).
No TTL. Read by ``syncworker status``, ``/v1/stats`` and ``/metrics``."""

INBOX: Final = "sw:inbox"
"""Stream of accepted requests' payloads (fields ``r`` reference, ``d`` note, ``p`` payload).
Owner: syncworker/queue/enqueue.py (XADD), syncworker/queue/inbox.py (XACK, XDEL). No TTL:
entries leave once their events are applied or quarantined."""

INBOX_GROUP: Final = "ingest"
"""The consumer group of :data:`INBOX` that ingest jobs read it through (not a key: a name inside
the stream). Owner: syncworker/queue/inbox.py; consumers are ingest job ids."""

INBOX_QUEUED: Final = "sw:inbox:queued"
"""String: the id of the ingest job queued and not yet started. Owner:
syncworker/queue/enqueue.py (set), syncworker/queue/inbox.py (cleared when the job starts, or by
the supervisor when the job is gone). TTL: ``INBOX_QUEUED_TTL_S`` (3600 s, a backstop)."""

INBOX_TRIES: Final = "sw:inbox:alone"
"""Hash: inbox entry id -> times applying it alone was begun. Owner: syncworker/queue/inbox.py.
No TTL: a field leaves with its entry."""

QUARANTINE: Final = "sw:quarantine"
"""List of JSON records of verified requests' data that failed validation, newest first. Owner:
syncworker/queue/enqueue.py (push, trim), syncworker/ops/replay.py (rewrite, remove),
``syncworker forget``. No TTL: bounded in records and bytes."""

QUARANTINE_BYTES: Final = "sw:quarantine:bytes"
"""String (integer): the byte total of :data:`QUARANTINE`'s records. Owner: the quarantine
scripts. No TTL; recomputed from the list when missing."""

NONCE: Final = "sw:nonce:"
"""String ``sw:nonce:<esp>:<sha256 of the nonce>`` -> "1": a signed webhook's nonce seen. Owner:
syncworker/intake/auth/nonces.py. TTL: the signature's skew window."""


def nonce_key(esp: str, nonce_sha256: str) -> str:
    """The :data:`NONCE` key of a nonce (already hashed) of ``esp``'s signatures."""
    return f"{NONCE}{esp}:{nonce_sha256}"


# -- the ledger (syncworker/ledger.py) ---------------------------------------------------------

CONTACT: Final = "sw:c:"
"""String ``sw:c:<address>``: the address's record, one compact JSON array (see
syncworker/ledger.py); in the old layout a hash. Owner: syncworker/ledger.py. No TTL."""

CONTACT_COUNT: Final = "sw:contacts:n"
"""String (integer): how many records there are. Owner: syncworker/ledger.py. No TTL."""

EVENT: Final = "sw:ev:"
"""String ``sw:ev:<event key>``: an event (the codec's JSON form) awaiting event-stream
destinations. Owner: syncworker/ledger.py (set), syncworker/delivery/loop.py (deleted). TTL:
``dedupe_ttl_s``."""

PENDING: Final = "sw:pending:"
"""Sorted set ``sw:pending:<destination>``: id (an address, or an event key for event streams)
-> when it is due. Owner: syncworker/ledger.py (marks), syncworker/delivery/loop.py (takes,
backoff). No TTL."""

FORGOTTEN: Final = "sw:forgotten:"
"""String ``sw:forgotten:<sha256 of an erased address>``: the suppression reasons it kept (JSON),
restored if it is reported again. Owner: syncworker/ledger.py (``forget``). No TTL."""

HISTORY: Final = "sw:h:"
"""List ``sw:h:<address>``: the old layout's history (JSON entries). Owner: none now; read and
deleted when a record is converted. No TTL."""

SYNC: Final = "sw:sync:"
"""Hash ``sw:sync:<address>``: the old layout's sync status per destination. Owner: none now;
read and deleted when a record is converted. No TTL."""

CONFIRMED: Final = "sw:confirmed:"
"""Hash ``sw:confirmed:<destination>``: address -> the reasons it last confirmed (old layout;
now in the record). Owner: none now; fields read and deleted when a record is converted, and by
``syncworker forget``. No TTL."""

DEDUPE: Final = "sw:k:"
"""String ``sw:k:<event key>``: the old layout's dedupe marker. Owner: none now; honoured until it
expires. TTL: the ``dedupe_ttl_s`` of its time."""

CONTACTS: Final = "sw:contacts"
"""Set of addresses (old layout). Owner: none now; members leave as records are converted,
``syncworker migrate`` deletes it. No TTL."""

# -- delivery (syncworker/delivery/) -----------------------------------------------------------

INFLIGHT: Final = "sw:inflight:"
"""Sorted set ``sw:inflight:<destination>``: id -> lease expiry of ids a deliver job is sending.
Owner: syncworker/delivery/loop.py. No TTL (an expired lease makes its id due again)."""

ATTEMPTS: Final = "sw:attempts:"
"""Hash ``sw:attempts:<destination>``: id -> failed attempts so far. Owner:
syncworker/delivery/loop.py. No TTL: a field leaves on success or dead-lettering."""

DEAD: Final = "sw:dead:"
"""List ``sw:dead:<destination>``: dead letters (JSON), newest first. Owner:
syncworker/delivery/loop.py. No TTL (``syncworker replay <destination>`` empties it)."""

PAUSE: Final = "sw:pause:"
"""String ``sw:pause:<destination>``: why and until when the destination is paused (JSON). Owner:
syncworker/delivery/loop.py and syncworker/delivery/breaker.py. TTL: the pause."""

TAKERS: Final = "sw:takers:"
"""Hash ``sw:takers:<destination>``: deliver job id -> when it was queued; one field per taker (a
slot among the destination's concurrency). Owner: syncworker/delivery/loop.py. No TTL: a dead
taker's field is freed by the supervisor's tick."""

TAKEN: Final = "sw:taken:"
"""Hash ``sw:taken:<destination>:<job id>`` (:func:`taken_key`): a taker's batch in flight, id ->
lease expiry. Owner: syncworker/delivery/loop.py. TTL: the lease plus 60 s."""


def taken_key(destination: str, token: str) -> str:
    """The batch a taker (deliver job ``token``) has in flight: id -> lease expiry."""
    return f"{TAKEN}{destination}:{token}"


DSTATS: Final = "sw:dstats:"
"""Hash ``sw:dstats:<destination>``: delivery counters (outcomes, batches, dead, probes...).
Owner: syncworker/delivery/loop.py. No TTL."""

BREAKER: Final = "sw:breaker:"
"""Hash ``sw:breaker:<destination>``: the circuit breaker (state, since, failures, probe_at,
last_success_at, last_error, last_error_at). Owner: syncworker/delivery/breaker.py. No TTL."""

RATE: Final = "sw:rate:"
"""String ``sw:rate:<destination>``: the GCRA's next free request slot (unix seconds). Owner:
syncworker/delivery/ratelimit.py. TTL: until that slot, plus 1 s."""

# -- operations (syncworker/ops/) --------------------------------------------------------------

RECONCILE: Final = "sw:reconcile:"
"""Hash ``sw:reconcile:<destination>``: a resumable reconcile's cursor and counts. Owner:
syncworker/ops/reconcile.py. No TTL: deleted when the run completes or is restarted."""
