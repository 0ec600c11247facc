"""How many torch threads a job uses: the cores it can really have, checked again while it runs.

torch starts one intra-op thread per core of the machine, whatever else runs there. Its parallel
regions end at a barrier, so when another process keeps a core busy, every region waits for the
thread the scheduler took away, and a job runs many times slower than with one thread fewer
(docs/benchmarks.md, "Jobs"). The rule (docs/jobs.md, "Threads"), applied when a job starts and
every second while it runs:

    threads = max(1, min(cap, floor(min(usable - busy_elsewhere, quota) / job_slots + SLACK)))

- ``usable``: the CPUs this process may run on (its affinity mask).
- ``busy_elsewhere``: cores kept busy over the last sampling window by processes outside this
  deployment. This deployment is this process, its parent (the API with its dispatcher, or the
  Celery worker) and the parent's other children (the other job processes).
- A cgroup CPU quota (a container's CPU limit) caps ``usable - busy_elsewhere``: other containers'
  load on the host does not take from the quota.
- ``job_slots``: jobs this deployment runs at once on this machine (the embedded dispatcher's
  ``LAMBDAHAT_EMBEDDED_MAX_CONCURRENT_JOBS``; 1 for a Celery worker, one job at a time).
- ``SLACK``: load below a fifth of a core elsewhere does not cost a thread (shells, editors).
- ``cap``: ``OMP_NUM_THREADS`` when the environment sets it. ``LAMBDAHAT_JOB_THREADS`` set to a
  number fixes the count and turns the rule off.

Linux only (/proc); elsewhere nothing is measured and the count is ``usable / job_slots``.
Torch-free: the dispatcher and the Celery worker's parent may import it.
"""

from __future__ import annotations

import math
import os
import threading
from dataclasses import dataclass
from pathlib import Path

SLACK = 0.2
SAMPLE_INTERVAL_S = 0.5
CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def usable_cpus() -> list[int]:
    """The CPUs this process may run on."""
    try:
        return sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return list(range(os.cpu_count() or 1))


def cpu_quota() -> float | None:
    """The cgroup CPU limit in cores (v2 ``cpu.max``, v1 ``cfs_quota_us``), or None when unlimited."""
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read_text())
        period = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text())
        return None if quota <= 0 else quota / period
    except (OSError, ValueError):
        return None


def _cpu_ticks(cpus: list[int]) -> tuple[int, int] | None:
    """(busy, total) clock ticks since boot, summed over ``cpus``, from /proc/stat."""
    try:
        lines = Path("/proc/stat").read_text().splitlines()
    except OSError:
        return None
    wanted = {f"cpu{c}" for c in cpus}
    busy = total = 0
    for line in lines:
        fields = line.split()
        if not fields or fields[0] not in wanted:
            continue
        # user nice system idle iowait irq softirq steal (guest time is already counted in user)
        values = [int(v) for v in fields[1:9]]
        idle = values[3] + values[4]
        total += sum(values)
        busy += sum(values) - idle
    return (busy, total) if total else None


def _process_ticks(pid: int) -> int:
    """User + system clock ticks of every thread of ``pid`` (0 for a process that is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0
    fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) ": state is field 3
    return int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)


def _children(pid: int) -> list[int]:
    pids: list[int] = []
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return pids
    for task in tasks:
        try:
            pids += [int(p) for p in (task / "children").read_text().split()]
        except (OSError, ValueError):
            continue
    return pids


def deployment_pids() -> set[int]:
    """This process, its parent and the parent's other children: the job processes of one deployment."""
    me, parent = os.getpid(), os.getppid()
    return {me, parent, *_children(parent)} if parent > 1 else {me}


class CoreMeter(threading.Thread):
    """Measures, every ``interval`` seconds, how many cores processes outside this deployment keep busy.

    ``busy_elsewhere`` is None until the first window closes (and on systems without /proc); the
    first window opens when the meter is made.
    """

    def __init__(self, interval: float = SAMPLE_INTERVAL_S) -> None:
        super().__init__(name="lambdahat-core-meter", daemon=True)
        self.interval = interval
        self.cpus = usable_cpus()
        self.busy_elsewhere: float | None = None
        self._stop_event = threading.Event()
        self._lock = threading.Lock()
        self._last = self._sample()

    def _sample(self) -> tuple[int, int, dict[int, int]] | None:
        ticks = _cpu_ticks(self.cpus)
        if ticks is None:
            return None
        return ticks[0], ticks[1], {pid: _process_ticks(pid) for pid in deployment_pids()}

    def measure(self) -> float | None:
        """Close the current window: cores busy elsewhere since the previous call."""
        with self._lock:
            return self._measure()

    def _measure(self) -> float | None:
        now = self._sample()
        last, self._last = self._last, now
        if now is None or last is None or now[1] <= last[1]:
            return self.busy_elsewhere
        elapsed_per_cpu = (now[1] - last[1]) / len(self.cpus)
        ours = sum(ticks - last[2].get(pid, 0) for pid, ticks in now[2].items())  # a new process: all of its time
        busy = (now[0] - last[0] - ours) / elapsed_per_cpu
        self.busy_elsewhere = max(0.0, busy)
        return self.busy_elsewhere

    def run(self) -> None:
        while not self._stop_event.wait(self.interval):
            self.measure()

    def stop(self) -> None:
        self._stop_event.set()


@dataclass
class ThreadRule:
    """The rule of this module for one job process."""

    job_slots: int = 1
    fixed: int | None = None  # LAMBDAHAT_JOB_THREADS: this many, always
    meter: CoreMeter | None = None

    @classmethod
    def for_process(cls, *, job_slots: int, fixed: int | None) -> ThreadRule:
        """The rule with a running meter (none when the count is fixed)."""
        meter = None
        if not fixed:
            meter = CoreMeter()
            meter.start()
        return cls(job_slots=max(1, job_slots), fixed=fixed or None, meter=meter)

    def threads(self) -> tuple[int, str]:
        """The thread count for now, and why (a short sentence for the job's result)."""
        if self.fixed:
            return self.fixed, f"fixed by LAMBDAHAT_JOB_THREADS={self.fixed}"
        usable = len(usable_cpus())
        busy = None
        if self.meter is not None:
            # No window closed yet (a job right after the process started): close the one open so far.
            busy = self.meter.busy_elsewhere if self.meter.busy_elsewhere is not None else self.meter.measure()
        free = usable - (busy or 0.0)
        why = f"{usable} usable cores"
        if busy is not None:
            why += f", {busy:.1f} busy elsewhere"
        quota = cpu_quota()
        if quota is not None and quota < free:
            free = quota
            why += f", a CPU quota of {quota:g} cores"
        count = max(1, math.floor(free / self.job_slots + SLACK))
        if self.job_slots > 1:
            why += f", {self.job_slots} job slots"
        cap = _omp_num_threads()
        if cap is not None and cap < count:
            count = cap
            why += f", capped by OMP_NUM_THREADS={cap}"
        return count, why

    def stop(self) -> None:
        if self.meter is not None:
            self.meter.stop()


def _omp_num_threads() -> int | None:
    value = os.environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    return int(value) if value.isdigit() and int(value) > 0 else None
