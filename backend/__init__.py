"""The service's shared backend: what the HTTP API and the job workers both stand on.

- ``settings``: every ``LAMBDAHAT_*`` setting;
- ``db``, ``models``, ``migrate``: the SQL database, its tables and its migrations;
- ``lifecycle``: the job state machine (claim, heartbeat, progress, finish, cancel, re-queue);
- ``queue``, ``celery_app``: delivering "run job X" to the embedded dispatcher or to Celery;
- ``dispatcher``: the embedded server's warm job processes; ``reaper``: re-queues stale jobs;
- ``storage``, ``formats``: artifact files and reading them safely; ``logs``; ``workers``: the
  registry of live Celery workers.

HTTP-free and torch-free: ``api/`` (HTTP only) and ``worker/`` (execution only) import this package
and never each other.
"""
