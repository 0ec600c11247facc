"""Structured logs: one JSON object per line with time, level, logger, message and job_id/worker
where known; from a warm job process (``python -m worker.job_process``, what the embedded dispatcher
runs) for real. Celery workers' and the API's JSON logs are checked in test_status_cli.py / test_metrics.py."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
import threading
from datetime import datetime
from pathlib import Path

import pytest

from backend import logs
from tests.helpers import api, make_api, service_settings  # noqa: F401 - fixtures
from tests.jobs.seed import seed_artifacts

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def capture():  # noqa: ANN201
    """A JSON handler on a private logger (the root logger and pytest's capture stay untouched)."""
    stream = io.StringIO()
    handler = logs.make_handler("json", stream)
    logger = logging.getLogger(f"lambdahat.test.{id(stream)}")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    yield logger, lambda: [json.loads(line) for line in stream.getvalue().splitlines()]
    logger.removeHandler(handler)


def test_json_lines_carry_the_documented_fields(capture) -> None:  # noqa: ANN001
    logger, records = capture
    logger.info("plain %s", "message")
    logger.warning("with extra", extra={"job_id": "j1", "attempt": 2})
    with logs.log_context(job_id="j2", worker="gpu0"):
        logger.info("in a job")
        try:
            raise RuntimeError("boom")
        except RuntimeError:
            logger.exception("failed")
    logger.info("after the job")
    plain, extra, in_job, failed, after = records()
    for record in records():
        assert {"time", "level", "logger", "message", "process"} <= set(record)
        assert datetime.fromisoformat(record["time"].replace("Z", "+00:00")).tzinfo is not None
    assert plain["message"] == "plain message" and plain["level"] == "INFO" and "job_id" not in plain
    assert extra["job_id"] == "j1" and extra["attempt"] == 2 and extra["level"] == "WARNING"
    assert (in_job["job_id"], in_job["worker"]) == ("j2", "gpu0")
    assert failed["exc_type"] == "RuntimeError" and "raise RuntimeError" in failed["traceback"]
    assert failed["job_id"] == "j2"
    assert "job_id" not in after and "worker" not in after  # the context ended with the block


def test_context_is_per_thread_and_process_defaults_apply_everywhere(capture) -> None:  # noqa: ANN001
    logger, records = capture

    def other_thread() -> None:
        logger.info("unbound thread")
        logs.bind_context(job_id="j-thread")
        logger.info("bound thread")

    logs.set_process_context(worker="w-proc")
    try:
        with logs.log_context(job_id="j-main"):
            thread = threading.Thread(target=other_thread)
            thread.start()
            thread.join()
            logger.info("main")
    finally:
        logs.set_process_context(worker=None)
    unbound, bound, main = records()
    assert "job_id" not in unbound and unbound["worker"] == "w-proc"
    assert bound["job_id"] == "j-thread" and main["job_id"] == "j-main"
    with pytest.raises(ValueError, match="unknown log context field"):
        logs.set_process_context(owner="x")


def test_uvicorn_access_records_get_request_fields(capture) -> None:  # noqa: ANN001
    logger, records = capture
    logger.info('%s - "%s %s HTTP/%s" %d', "127.0.0.1:5000", "GET", "/v1/jobs/abc", "1.1", 404)
    record = records()[0]
    assert "client" not in record  # only uvicorn's access logger is parsed
    access = logging.LogRecord("uvicorn.access", logging.INFO, __file__, 1, '%s - "%s %s HTTP/%s" %d',
                               ("127.0.0.1:5000", "GET", "/v1/jobs/abc", "1.1", 404), None)
    parsed = json.loads(logs.JsonFormatter().format(access))
    assert (parsed["method"], parsed["path"], parsed["status"], parsed["client"]) == ("GET", "/v1/jobs/abc", 404,
                                                                                      "127.0.0.1:5000")


def test_configure_logging_replaces_only_its_own_handler() -> None:
    root = logging.getLogger()
    foreign = logging.NullHandler()
    root.addHandler(foreign)
    level = root.level
    try:
        stream = io.StringIO()
        logs.configure_logging(log_format="text", level="INFO", stream=stream)
        logs.configure_logging(log_format="json", level="DEBUG", stream=stream)
        ours = [h for h in root.handlers if getattr(h, "_lambdahat", False)]
        assert len(ours) == 1 and isinstance(ours[0].formatter, logs.JsonFormatter)
        assert foreign in root.handlers and root.level == logging.DEBUG and logs.is_json_logging()
        with pytest.raises(ValueError, match="log format must be"):
            logs.configure_logging(log_format="xml", level="INFO")
    finally:
        for handler in [h for h in root.handlers if getattr(h, "_lambdahat", False)] + [foreign]:
            root.removeHandler(handler)
        root.setLevel(level)
        logging.captureWarnings(False)


def test_text_format_shows_the_job_and_worker() -> None:
    stream = io.StringIO()
    handler = logs.make_handler("text", stream)
    record = logging.LogRecord("lambdahat.runner", logging.INFO, __file__, 1, "claimed", (), None)
    with logs.log_context(job_id="abc", worker="gpu1"):
        handler.handle(record)
    assert stream.getvalue().rstrip().endswith("INFO lambdahat.runner [job=abc worker=gpu1]: claimed")


@pytest.fixture
def database_url(sqlite_url):  # noqa: ANN001 - the log format does not depend on the database
    return sqlite_url


def test_job_process_writes_json_lines_with_the_job_id(api) -> None:  # noqa: ANN001, F811
    """``python -m worker.job_process`` handed one job, as the embedded dispatcher does: the job's own
    lines go to its log file, the process's lines (warm-up, exit) to its output; all JSON."""
    seeded = seed_artifacts(api.settings, api.owner)
    config = {"num_chains": 1, "num_draws": 20, "num_burnin_steps": 5, "epsilon": 1e-3, "gamma": 100.0,
              "batch_size": 32, "seed": 0, "device": "cpu"}
    job_id = api.post("/v1/jobs", json={"checkpoint_id": seeded.checkpoint_id, "dataset_id": seeded.dataset_id,
                                        "loss": "cross_entropy", "config": config}).json()["id"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("LAMBDAHAT_")}
    env.update(LAMBDAHAT_DATA_DIR=str(api.settings.data_dir), LAMBDAHAT_DATABASE_URL=api.settings.database_url,
               LAMBDAHAT_LOG_FORMAT="json", OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    replies_read, replies_write = os.pipe()
    process = subprocess.Popen([sys.executable, "-m", "worker.job_process", "--worker", "json-worker",
                                "--reply-fd", str(replies_write)], cwd=ROOT, env=env, stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, pass_fds=(replies_write,), text=True)
    os.close(replies_write)
    output, _ = process.communicate(json.dumps({"job_id": job_id}) + "\n", timeout=120)
    with os.fdopen(replies_read) as replies_file:
        replies = [json.loads(line) for line in replies_file]
    assert process.returncode == 0, output
    assert [r["event"] for r in replies] == ["ready", "finished"]
    assert replies[1]["job_id"] == job_id and replies[1]["status"] == "succeeded" and replies[1]["rss_bytes"] > 0

    job_log = Path(api.settings.data_dir) / "logs" / "jobs" / f"{job_id}.log"
    records = [json.loads(line) for line in job_log.read_text().splitlines() if line.strip()]  # all JSON
    runner = [r for r in records if r["logger"] == "lambdahat.runner"]
    assert any("claimed by json-worker" in r["message"] for r in runner)
    assert any("succeeded" in r["message"] for r in runner)
    assert all(r["job_id"] == job_id and r["worker"] == "json-worker" for r in runner)
    summary = records[-1]
    assert summary["logger"] == "lambdahat.job_process" and summary["job_id"] == job_id

    own = [json.loads(line) for line in output.splitlines() if line.strip()]  # the process's lines, JSON too
    assert any("warm after" in r["message"] for r in own) and all(r["worker"] == "json-worker" for r in own)
    assert not any(r.get("job_id") == job_id for r in own)  # the job's lines went to the job's log
    assert api.get(f"/v1/jobs/{job_id}").json()["status"] == "succeeded"
