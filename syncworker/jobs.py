"""The names RQ stores for syncworker's jobs.

RQ records a job by its function's dotted path, so these names are a contract with jobs already
queued and with workers of other releases running beside this one: they stay, and lead to
:mod:`syncworker.queue.jobs`, where the jobs are written.
"""

from syncworker.queue.jobs import deliver, drain_inbox, ingest

__all__ = ["deliver", "drain_inbox", "ingest"]
