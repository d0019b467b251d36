"""From the ledger to each destination: the delivery loop, its scheduling, the shared rate limiter,
the circuit breaker and dead letters.
"""
