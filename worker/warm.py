"""What keeps a job process warm between jobs: one warm-up at start, memory handed back after each job.

Used by the embedded dispatcher's job processes (``worker.job_process``) and by Celery pool
processes (``worker.tasks``), which both run many jobs each.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import os
import time
from pathlib import Path


def warm_up() -> float:
    """Import what a job uses, run one tiny estimate, and freeze what that left for the garbage
    collector; returns the seconds it took.

    The freeze matters: importing torch leaves hundreds of thousands of long-lived objects, and every
    full collection walks them all, between jobs and in the middle of one (a tenth of a second or
    more each: docs/benchmarks.md, "Jobs"). Frozen, they are skipped.
    """
    start = time.perf_counter()
    import torch

    import backend.storage  # noqa: F401 - imported by the runner for every job
    import worker.loading  # noqa: F401
    import worker.runner  # noqa: F401
    from estimator import LLCConfig, estimate_llc

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        generator = torch.Generator().manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2))
        x = torch.randn(32, 3, generator=generator)
        y = (x[:, 0] > 0).long()
        estimate_llc(model, (x, y), loss="cross_entropy", config=LLCConfig(
            num_chains=2, num_draws=3, num_burnin_steps=0, epsilon=1e-4, batch_size=8, seed=0, device="cpu"))
    finally:
        torch.set_num_threads(threads)
    gc.collect()
    gc.freeze()
    return time.perf_counter() - start


def release_memory() -> int:
    """Collect garbage, hand freed heap back to the system, and return the resident set size in bytes."""
    gc.collect()
    libc_name = ctypes.util.find_library("c")
    if libc_name:
        try:
            ctypes.CDLL(libc_name).malloc_trim(0)  # glibc keeps freed heap unless asked
        except (OSError, AttributeError):
            pass
    return resident_bytes()


def resident_bytes() -> int:
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return pages * os.sysconf("SC_PAGE_SIZE")
