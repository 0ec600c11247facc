"""``python -m worker.run_job JOB_ID``: run one job in this process (the embedded dispatcher's unit of work).

Settings come from the ``LAMBDAHAT_*`` environment, which the dispatcher passes on. With
``--exit-with-parent`` the job stops (leaving the row for the next dispatcher to re-queue) when the
process that started it goes away.
"""

from __future__ import annotations

import argparse
import logging
import sys

from api.observability.logs import configure_logging, is_json_logging
from worker.runner import run_job


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m worker.run_job", description=__doc__)
    parser.add_argument("job_id")
    parser.add_argument("--worker", default="embedded", help="recorded as the job's worker")
    parser.add_argument("--device", default=None, help="device for configs that ask for 'auto'")
    parser.add_argument("--exit-with-parent", action="store_true")
    args = parser.parse_args(argv)
    configure_logging(worker=args.worker)  # LAMBDAHAT_LOG_FORMAT: text or one JSON object per line
    outcome = run_job(args.job_id, worker_name=args.worker, device=args.device,
                      exit_with_parent=args.exit_with_parent)
    summary = f"job {outcome.job_id}: {outcome.status} {outcome.detail}".rstrip()
    if is_json_logging():
        logging.getLogger("lambdahat.run_job").info("%s", summary, extra={"job_id": outcome.job_id})
    else:
        print(summary, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
