"""Observability: structured logs (``logs``), the cluster summary behind ``/v1/status`` and
``lambdahat status`` (``status``), and the worker registry those read (``workers``).
Prometheus metrics live in ``api.metrics``. See docs/observability.md.
"""
