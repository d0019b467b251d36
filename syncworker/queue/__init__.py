"""From accepted request to applied event: the group-commit enqueuer, the inbox stream, the RQ jobs
and the worker process.
"""
