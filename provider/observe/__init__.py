"""What an instance tells operators about itself: status, metrics, the micro service.

``status`` is the typed status document; ``introspection`` builds it from a running daemon and
serves it as a NATS micro service; ``prometheus`` exports the same numbers over HTTP; ``metrics``
counts calls and keeps recent latencies cheaply enough for the hot path.
"""
