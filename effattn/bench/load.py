"""Is the machine busy? What the machine says, beside what the run sees.

The rounds (`effattn.bench.rounds`) judge each round by the reference matmul against the best
readings of the same run: a load that comes and goes is seen. A load present from the run's first
round to its last is not - the run's best reading is then a loaded one. Three things the machine
itself says catch it:

* other processes' CPU time over the group's rounds: the whole machine's busy time
  (/proc/stat, steal included) minus the measuring process's own (`os.times`), in cores. More
  than the cores our threads leave free, by CONTENTION_CORES, is a load.
* the load average (runnable tasks over the last minute) against the CPUs: its lowest reading
  over a group above CPUs + LOADAVG_MARGIN is a load.
* the reference rate against the rate this machine reached before: the quiet groups' rates are
  kept per machine (host, CPU, threads, device, dtype) in the user's cache (`env.cache_dir()`), and a
  group whose rate is below (1 - rounds.LOAD_TOLERANCE) of their median ran on a slowed machine.

`MachineLoad.verdict` returns the reasons found (none: quiet). `wait_for_quiet` is what
`--require-quiet` waits with before each group.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import statistics
import time

from ..env import cache_dir

#: others' CPU use beyond the cores our threads leave free that marks a group as loaded
CONTENTION_CORES = 0.5
#: the load average may exceed the CPU count by this much before it marks a group as loaded
LOADAVG_MARGIN = 1.0
#: history: entries kept per machine, and how old an entry may be
HISTORY_KEEP, HISTORY_DAYS = 100, 30
#: history: readings needed before the machine's usual rate is trusted
HISTORY_MIN = 3
#: --require-quiet: seconds to wait for quiet before a group, and tries of a group that was loaded
QUIET_WAIT_S, QUIET_TRIES = 120.0, 3


def _clock_ticks() -> int:
    try:
        return os.sysconf("SC_CLK_TCK")
    except (ValueError, OSError, AttributeError):
        return 100


def read_cpu() -> tuple[float, int] | None:
    """(seconds of busy CPU time of the whole machine since boot, CPUs counted), or None."""
    try:
        with open("/proc/stat") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    total = None
    cpus = 0
    for line in lines:
        parts = line.split()
        if parts and parts[0] == "cpu":
            v = [int(x) for x in parts[1:]]
            # user nice system idle iowait irq softirq steal (guest is inside user)
            total = sum(v[i] for i in (0, 1, 2, 5, 6, 7) if i < len(v))
        elif parts and parts[0].startswith("cpu") and parts[0][3:].isdigit():
            cpus += 1
    if total is None:
        return None
    return total / _clock_ticks(), cpus or (os.cpu_count() or 1)


def own_cpu_s() -> float:
    t = os.times()
    return t.user + t.system


def loadavg() -> float | None:
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


class CpuMeter:
    """CPU time of everything but this process, between `start()` and `stop()`."""

    def __init__(self):
        self.t0 = self.busy0 = self.own0 = None
        self.cpus = os.cpu_count() or 1

    def start(self) -> CpuMeter:
        got = read_cpu()
        self.t0, self.own0 = time.monotonic(), own_cpu_s()
        self.busy0, self.cpus = got if got else (None, self.cpus)
        return self

    def stop(self) -> dict:
        """{'others_cpu_cores', 'own_cpu_cores', 'cpus'} over the interval (None where unknown)."""
        wall = max(time.monotonic() - (self.t0 or time.monotonic()), 1e-9)
        own = (own_cpu_s() - self.own0) / wall if self.own0 is not None else None
        got = read_cpu()
        others = None
        if got and self.busy0 is not None and own is not None:
            others = max(0.0, (got[0] - self.busy0) / wall - own)
        return {"others_cpu_cores": others, "own_cpu_cores": own, "cpus": self.cpus}


def contention(others: float | None, cpus: int, threads: int) -> float | None:
    """Cores others took beyond those our threads leave free (0 when they fit beside us)."""
    if others is None:
        return None
    return max(0.0, others - max(0, cpus - threads))


# ------------------------------------------------------------------------ the machine's history
def machine_key(env: dict, device: str, dtype: str, probe_n: int) -> str:
    """The machine a reference rate belongs to: host, CPU, threads, GPU, device, dtype, probe."""
    return "|".join(
        str(x)
        for x in (
            env.get("host") or platform.node(),
            env.get("cpu"),
            f"threads={env.get('threads')}",
            env.get("gpu"),
            device,
            dtype,
            f"probe={probe_n}",
        )
    )


class History:
    """The quiet reference rates this machine reached before (a JSON file in the cache)."""

    def __init__(self, path: str | None = None):
        self.path = path or os.path.join(cache_dir(), "machine-rates.json")

    def _read(self) -> dict:
        try:
            with open(self.path) as f:
                data = json.load(f)
            return data if isinstance(data, dict) and isinstance(data.get("machines"), dict) else {"machines": {}}
        except (OSError, ValueError):
            return {"machines": {}}

    def usual(self, key: str, now: float | None = None) -> float | None:
        """The median of this machine's recent quiet rates (None with fewer than HISTORY_MIN)."""
        now = now or time.time()
        rates = [
            r
            for t, r in self._read()["machines"].get(key, [])
            if isinstance(r, (int, float)) and r > 0 and now - t < HISTORY_DAYS * 86400
        ]
        return statistics.median(rates) if len(rates) >= HISTORY_MIN else None

    def record(self, key: str, rate: float) -> None:
        """Add a quiet group's rate. Never fails a measurement (a read-only home is fine)."""
        with contextlib.suppress(OSError):
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            import fcntl

            with open(self.path + ".lock", "a") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                data = self._read()
                entries = data["machines"].setdefault(key, [])
                entries.append([time.time(), float(rate)])
                del entries[:-HISTORY_KEEP]
                tmp = f"{self.path}.{os.getpid()}.tmp"
                with open(tmp, "w") as f:
                    json.dump(data, f)
                os.replace(tmp, self.path)


def verdict(meter: dict, threads: int, loadavg_min: float | None, rate: float | None, usual: float | None,
            tolerance: float) -> list[str]:  # fmt: skip
    """Why a group was measured on a busy machine (empty: it was not)."""
    why = []
    taken = contention(meter.get("others_cpu_cores"), meter.get("cpus") or 1, threads)
    if taken is not None and taken > CONTENTION_CORES:
        why.append(
            f"other processes used {meter['others_cpu_cores']:.1f} of {meter['cpus']} CPUs beside "
            f"our {threads} thread(s)"
        )
    cpus = meter.get("cpus") or 1
    if loadavg_min is not None and loadavg_min > cpus + LOADAVG_MARGIN:
        why.append(f"the load average stayed above {loadavg_min:.1f} on {cpus} CPUs")
    if rate and usual and rate < (1 - tolerance) * usual:
        why.append(f"the matmul reference ran at {rate / usual:.0%} of this machine's usual {usual:.0f} GFLOP/s")
    return why


def wait_for_quiet(threads: int, budget_s: float = QUIET_WAIT_S, window_s: float = 1.0, log=None) -> str | None:
    """Wait until two consecutive windows of `window_s` see no contention, for at most `budget_s`.
    None when quiet; else what was busy."""
    deadline = time.monotonic() + budget_s
    quiet_windows, said, last = 0, False, None
    while True:
        m = CpuMeter().start()
        time.sleep(window_s)
        got = m.stop()
        taken = contention(got["others_cpu_cores"], got["cpus"], threads)
        if taken is None:
            return None  # nothing to judge by: /proc/stat unreadable
        if taken <= CONTENTION_CORES:
            quiet_windows += 1
            if quiet_windows >= 2:
                return None
            continue
        quiet_windows = 0
        last = f"other processes used {got['others_cpu_cores']:.1f} of {got['cpus']} CPUs"
        if log and not said:
            log(f"--require-quiet: waiting for the machine to be quiet ({last})")
            said = True
        if time.monotonic() > deadline:
            return last
