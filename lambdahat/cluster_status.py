"""``lambdahat status`` without an id: the cluster summary from ``GET /v1/status``.

It asks the API (like every user command: ``--url`` / ``LAMBDAHAT_URL``, the key from ``--api-key``,
``LAMBDAHAT_API_KEY`` or the local key file), not the database: the same command works from any
machine that can reach the server, and needs no database credentials. Operators on a machine with
the deployment's settings can read the database instead (``--from-database``); that is also the
fallback when no server address was given and the default local server is not running.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from lambdahat._http import Call, json_body


def _op_cluster_status(ping: bool) -> Any:
    response = yield Call("GET", "/v1/status", params={"ping": "true"} if ping else None)
    return json_body(response)


def fetch_cluster_status(client: Any, *, ping: bool = False) -> dict[str, Any]:
    return client._drive(_op_cluster_status(ping))


def cluster_status(url: str | None, api_key: str | None, *, ping: bool = False,
                   from_database: bool = False) -> dict[str, Any]:
    """From the API; from the database with ``from_database``, or when no URL was given (argument or
    LAMBDAHAT_URL) and nothing answers at the default address."""
    import os

    from lambdahat import Client
    from lambdahat.errors import ConnectionFailed

    if from_database:
        return _from_database(ping)
    try:
        with Client(url=url, api_key=api_key) as client:
            return fetch_cluster_status(client, ping=ping)
    except ConnectionFailed as exc:
        if url or os.environ.get("LAMBDAHAT_URL"):
            raise
        from lambdahat._output import stderr

        stderr.print(f"note: {exc}; reading the database of this machine's settings instead", highlight=False)
        return _from_database(ping)


# How to read this machine's deployment database, installed by the operator's command line
# (``ops/cli.py``); None where only the SDK runs.
read_database: Callable[[bool], dict[str, Any]] | None = None


def _from_database(ping: bool) -> dict[str, Any]:
    from lambdahat.errors import ServerError

    if read_database is None:
        raise ServerError("reading the database needs the operator's command line (`lambdahat status`, "
                          "with the server parts installed)")
    try:
        return read_database(ping)
    except Exception as exc:  # noqa: BLE001 - e.g. no database at the configured URL
        message = str(exc).splitlines()[0] if str(exc) else ""
        raise ServerError(f"cannot read the database: {type(exc).__name__}: {message}") from None


def print_cluster_status(status: dict[str, Any], output_format: str) -> None:
    from lambdahat._output import print_csv, print_json, print_key_values

    if output_format == "json":
        print_json(status)
        return
    jobs = status.get("jobs") or {}
    queue = status.get("queue") or {}
    alive = (status.get("workers") or {}).get("alive", 0)
    if output_format == "csv":  # one row: the numbers a script would watch
        row = {"mode": status.get("mode"), "workers_alive": alive, "queue_depth": queue.get("depth"),
               "oldest_wait_s": queue.get("oldest_wait_s"), "stale_running": status.get("stale_running"),
               **{f"jobs_{name}": count for name, count in jobs.items()}}
        print_csv(list(row), [row])
        return
    print_key_values(_summary_pairs(status), title=f"lambdahat cluster at {status.get('time')}")
    _print_workers(status)
    _print_running_jobs(status)


def _summary_pairs(status: dict[str, Any]) -> list[tuple[str, Any]]:
    jobs = status.get("jobs") or {}
    queue = status.get("queue") or {}
    workers = (status.get("workers") or {}).get("items") or []
    alive = (status.get("workers") or {}).get("alive", 0)
    pairs: list[tuple[str, Any]] = [("mode", status.get("mode"))]
    if status.get("source") == "database":
        pairs.append(("source", "the database (not the API)"))
    embedded = status.get("embedded")
    if embedded:
        state = {True: "running", False: "not running", None: "unknown"}[embedded.get("dispatcher_running")]
        pairs.append(("dispatcher", f"{state} in the API process, up to {embedded.get('max_concurrent_jobs')} "
                                    "job(s) at a time"))
        processes = embedded.get("job_processes")
        if processes is not None:
            described = [f"pid {p['pid']} {'busy' if p['busy'] else 'idle'}{'' if p['warm'] else ', warming up'}, "
                         f"{p['jobs_done']} job(s) done" for p in processes]
            pairs.append(("job processes", "; ".join(described) or "none"))
    broker = status.get("broker")
    if broker:
        pairs.append(("broker", f"{broker.get('url')} (worker registry: {broker.get('registry')})"))
    pairs += [
        ("workers alive", f"{alive} of {len(workers)} seen (heartbeat within {status['workers']['heartbeat_timeout_s']:g} s)"),
        ("queue depth", f"{queue.get('depth', 0)}" + (f" (oldest waiting {queue['oldest_wait_s']:.0f} s)"
                                                      if queue.get("depth") else "")),
        ("jobs", ", ".join(f"{name} {count}" for name, count in jobs.items())),
    ]
    if status.get("stale_running"):
        pairs.append(("stale", f"{status['stale_running']} running job(s) without a recent heartbeat (reaper pending)"))
    return pairs


def _print_workers(status: dict[str, Any]) -> None:
    from lambdahat._output import print_table, stdout

    workers = (status.get("workers") or {}).get("items") or []
    if not workers:
        return
    ping = (status.get("broker") or {}).get("ping")
    rows = []
    for w in workers:
        answered = None
        if isinstance(ping, dict):
            answered = "yes" if any(host.split("@", 1)[0] == w["name"] or host == w["name"] for host in ping) else "no"
        rows.append([w["name"], w["state"], f"{w['heartbeat_age_s']:.0f} s ago", w.get("host") or "-",
                     ",".join(w.get("queues") or []) or "-", w.get("device") or "-",
                     *([answered] if isinstance(ping, dict) else [])])
    columns = ["worker", "state", "last heartbeat", "host", "queues", "device"]
    stdout.print()
    print_table(columns + (["ping"] if isinstance(ping, dict) else []), rows, title="workers")
    if isinstance(ping, str):
        stdout.print(ping, highlight=False)


def _print_running_jobs(status: dict[str, Any]) -> None:
    from lambdahat._output import print_table, stdout

    running = status.get("running") or []
    every_owner = status.get("running_scope") == "all"
    stdout.print()
    if not running:
        stdout.print(f"no running jobs{'' if every_owner else ' of yours'}", highlight=False)
        return
    rows = [[r["id"], *([r.get("owner")] if every_owner else []), r.get("worker"),
             f"{100 * (r.get('progress') or 0):.0f}%", r.get("draws_done"), r.get("attempts"),
             f"{r['heartbeat_age_s']:.0f} s ago" if r.get("heartbeat_age_s") is not None else "-"]
            for r in running]
    columns = ["job", *(["owner"] if every_owner else []), "worker", "progress", "draws", "attempt", "heartbeat"]
    print_table(columns, rows, title="running jobs" + ("" if every_owner else " (yours)"))
