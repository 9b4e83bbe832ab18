"""``nats-kvcache``: the operator CLI (``call`` an operation, run a ``dev`` lattice).

Kept apart from the daemon: nothing here is imported by ``python -m provider``, so the
provider's start-up cost and dependencies do not grow with the tooling.
"""
