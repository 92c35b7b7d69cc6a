"""Measuring processes: points measured outside the sweep's own process.

`MeasuringProcess` runs `python -m effattn.bench.worker` and hands it points one after another.
Results travel on a pipe of their own (passed as a file descriptor), never on the child's stdout
or stderr, which go to a log file: a plugin that prints, even at exit, cannot corrupt a result.
The parent waits for each result with the point's timeout; a point that overruns is killed and
recorded as `timeout`, and a child that dies is recorded by its evidence (`oom` only for a
MemoryError, an allocator failure or a kill by the kernel's OOM killer). Either way the next
point gets a fresh child. So the default sweep gets timeouts and crash safety for the price of
one process start, and `--isolate` is the same machinery with a fresh child per point.

Protocol (JSON lines): child -> parent `{"ready": pid}` once, then per job `{"tick": label}` as
calls start and `{"rows": [...]}` at the end; parent -> child one job per line:
{"spec": {...}, "variants": [{"name", "options"}, ...], "n": n, "baseline_gflops": x}. A job is
one length's variants, measured interleaved (`effattn.bench.rounds`).
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import time

#: seconds a fresh child may take to import torch and start answering
START_TIMEOUT_S = 180.0
#: the child says it is alive at most this often, as a call starts
TICK_S = 0.25


# ------------------------------------------------------------------------------------ the child
def _die_with_parent(parent: int | None) -> None:
    """Ask Linux to kill this process when its parent dies (a cancelled Ray task, a killed sweep):
    an orphaned measurement would otherwise keep a core or a GPU busy for nothing."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if parent is not None and os.getppid() != parent:  # the parent died before prctl took hold
        os._exit(1)


def serve(job_fd: int, result_fd: int, parent: int | None) -> None:
    _die_with_parent(parent)
    # Ctrl-C on a terminal reaches the whole process group; the parent decides what to do.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    from ..spec import Variant
    from . import point
    from .group import measure_group
    from .spec import SweepSpec

    point.IN_MEASURING_PROCESS = True
    # What the first job would otherwise pay inside its timeout, paid before saying "ready": the
    # plugins' imports, scipy's statistics, the environment's git call.
    import scipy.stats  # noqa: F401 - imported for its cost, paid before "ready"

    from ..env import environment
    from ..registry import list_attention

    list_attention()
    environment()
    out = os.fdopen(result_fd, "w", buffering=1)
    out.write(json.dumps({"ready": os.getpid()}) + "\n")
    last = {"t": 0.0, "label": None}

    def tick(label):
        # Says which variant is in a call: at once when it changes, else at most once per TICK_S
        # (a write per call would cost microseconds inside timed calls of a tenth of a millisecond).
        now = time.monotonic()
        if label != last["label"] or now - last["t"] >= TICK_S:
            last["t"], last["label"] = now, label
            out.write(json.dumps({"tick": label}) + "\n")

    with os.fdopen(job_fd) as jobs:
        for line in jobs:
            job = json.loads(line)
            last["label"] = None
            tick("")  # the job arrived
            try:
                if "check" in job:
                    out.write(json.dumps({"checked": check_variants(job["check"], tick)}) + "\n")
                    continue
                n = job["n"]
                variants = [Variant(v["name"], v["options"]) for v in job["variants"]]
                spec = SweepSpec(**{**job["spec"], "seq_lens": [n], "variants": variants})
                rows = measure_group(spec, variants, n, tick, job.get("baseline_gflops"))
            except BaseException as e:  # noqa: BLE001 - plugin code may raise SystemExit; say so, go on
                out.write(json.dumps({"failed": f"{type(e).__name__}: {str(e)[:500]}"}) + "\n")
                continue
            out.write(json.dumps({"rows": rows}, default=str) + "\n")
    out.flush()
    os._exit(0)  # no waiting for threads a plugin left behind


def check_variants(variants: list[dict], tick) -> list[str | None]:
    """Build each variant once, as the sweep will (a plugin's own option checks run here, in the
    measuring process, not in effattn's): None, or why it cannot be built."""
    from ..errors import EffattnError
    from ..registry import create_attention

    why = []
    for i, v in enumerate(variants):
        tick(str(i))  # by position: two variants may share a name (or a label)
        try:
            create_attention(v["name"], **v["options"])
            why.append(None)
        except EffattnError as e:
            why.append(str(e))
        except BaseException as e:  # noqa: BLE001 - whatever a plugin's __init__ raises
            why.append(f"{v['name']}: building it raised {type(e).__name__}: {str(e)[:300]}")
    return why


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 3:
        sys.exit("usage: python -m effattn.bench.worker JOB_FD RESULT_FD PARENT_PID")
    serve(int(argv[0]), int(argv[1]), int(argv[2]))


# ----------------------------------------------------------------------------------- the parent
def _oom_kills() -> int:
    """The kernel's count of OOM kills (system-wide and this cgroup's), or -1 if unknown."""
    total, known = 0, False
    for path, key in (("/proc/vmstat", "oom_kill"), ("/sys/fs/cgroup/memory.events", "oom_kill")):
        try:
            with open(path) as f:
                for line in f:
                    parts = line.split()
                    if len(parts) == 2 and parts[0] == key:
                        total += int(parts[1])
                        known = True
        except (OSError, ValueError):
            continue
    return total if known else -1


def _signal_name(code: int) -> str:
    try:
        return signal.Signals(-code).name
    except ValueError:
        return f"signal {-code}"


class MeasuringProcess:
    """A child process that measures points on request. Reused until a point kills it or
    overruns its timeout; then the next point starts a fresh one."""

    def __init__(self, label: str = "the measuring process"):
        self.label = label
        self.proc: subprocess.Popen | None = None
        self._jobs = None  # parent's write end of the job pipe
        self._results = None  # parent's read end of the result pipe (raw fd)
        self._buf = b""
        self._log = None
        self.starts = 0  # how many children this object started (for tests and notes)

    # -- life cycle --------------------------------------------------------------------------
    def _start(self) -> str | None:
        """Start a child and wait for it to say it is ready; None, or why it could not start."""
        job_r, job_w = os.pipe()
        res_r, res_w = os.pipe()
        # The child's stdout and stderr: a file unlinked at once (kept by its descriptors), so that
        # nothing is left behind however this process ends, and appended to, so that truncating it
        # between jobs keeps only the current job's output.
        path = os.path.join(tempfile.gettempdir(), f"effattn-worker-{os.getpid()}-{self.starts}-{time.time_ns()}.log")
        self._log = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600)
        os.unlink(path)
        try:
            # its own process group: a kill reaches whatever processes a plugin started too
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "effattn.bench.worker", str(job_r), str(res_w), str(os.getpid())],
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=self._log,
                pass_fds=(job_r, res_w),
                close_fds=True,
                start_new_session=True,
            )
        except OSError as e:  # e.g. out of processes or memory: close what was opened, say why
            for fd in (job_w, res_r, self._log):
                os.close(fd)
            self._log, self.proc = None, None
            return f"{self.label} could not be started: {e}"
        finally:
            os.close(job_r)
            os.close(res_w)
        self._jobs = os.fdopen(job_w, "w", buffering=1)
        self._results, self._buf = res_r, b""
        self.starts += 1
        msg = self._read_line(START_TIMEOUT_S)
        if isinstance(msg, dict) and "ready" in msg:
            return None
        why = "did not start in time" if msg == "timeout" else "exited while starting"
        tail = self._log_tail()
        self.close()
        return f"{self.label} {why}" + (f": {tail}" if tail else "")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def close(self) -> None:
        """Stop the child (politely: end of jobs; then by force) and whatever it started."""
        try:
            if self.proc is not None:
                try:
                    if self._jobs:
                        self._jobs.close()
                except OSError:
                    pass
                try:
                    self.proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    pass
        finally:
            self.kill()

    def kill(self) -> None:
        """Kill the child's whole process group (a plugin's own children included)."""
        try:
            if self.proc is not None:
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
                if self.proc.poll() is None:
                    self.proc.kill()
                self.proc.wait()
        finally:
            self._cleanup()

    def _cleanup(self) -> None:
        for closer in (
            lambda: self._jobs and self._jobs.close(),
            lambda: self._results is not None and os.close(self._results),
            lambda: self._log is not None and os.close(self._log),
        ):
            try:
                closer()
            except OSError:
                pass
        self._jobs, self._results, self.proc, self._log = None, None, None, None

    # -- one job -----------------------------------------------------------------------------
    def _read_line(self, timeout: float):
        """One JSON message from the child; "timeout", or "eof" when the child closed the pipe."""
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                return "timeout"
            ready, _, _ = select.select([self._results], [], [], min(left, 0.5))
            if not ready:
                # A process the plugin forked may hold the pipe open after the child died: the
                # child's own exit is the end, whatever the pipe says.
                if self.proc is not None and self.proc.poll() is not None:
                    ready, _, _ = select.select([self._results], [], [], 0)
                    if not ready:
                        return "eof"
                continue
            chunk = os.read(self._results, 1 << 16)
            if not chunk:
                return "eof"
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        try:
            return json.loads(line)
        except json.JSONDecodeError:
            return "garbled"

    def _log_tail(self, lines: int = 1) -> str:
        if self._log is None:
            return ""
        try:
            size = os.fstat(self._log).st_size
            text = os.pread(self._log, 8192, max(0, size - 8192)).decode(errors="replace")
        except OSError:
            return ""
        kept = [ln.strip() for ln in text.splitlines() if ln.strip()]
        return " | ".join(kept[-lines:])

    def _ensure_started(self) -> str | None:
        """A live child, started if need be; None, or why none could be started."""
        if self.alive():
            return None
        self._cleanup()
        return self._start()

    def _exchange(self, job: dict, timeout_s: float):
        """Send one job and wait for its answer: (message or "timeout"/"eof"/"garbled"/"broken",
        the label of the last tick). The child ticks as each call of the attention starts, naming
        the variant, so the timeout bounds one call (and any stretch of work between calls), as it
        does for a point measured in-process, and a crash or overrun is pinned on its variant."""
        current = None
        try:
            self._jobs.write(json.dumps(job, default=str) + "\n")
            self._jobs.flush()
        except (BrokenPipeError, OSError):
            return "broken", current
        while True:
            msg = self._read_line(timeout_s)
            if isinstance(msg, dict) and "tick" in msg:
                current = msg["tick"]
                continue
            return msg, current

    def check(self, variants: list[dict], timeout_s: float) -> list[str | None]:
        """Build each variant in the child (a plugin's own option checks, run away from effattn's
        process): None per variant that builds, or why it does not. A child that hangs, exits or
        crashes while building is reported against the variant it was building."""
        why = self._ensure_started()
        if why:
            return [why] * len(variants)
        if not variants:
            return []
        msg, current = self._exchange({"check": variants}, timeout_s)
        if isinstance(msg, dict) and "checked" in msg:
            return msg["checked"]
        what = (
            f"building it took longer than {timeout_s:g} s"
            if msg == "timeout"
            else f"building it ended {self.label} ({self._log_tail() or 'no output'})"
        )
        self.kill()
        try:
            at = int(current)
        except (TypeError, ValueError):
            at = -1
        if not 0 <= at < len(variants):  # before the first variant (importing, starting): none checked
            return [f"{v.get('label', v['name'])}: could not be checked: {what}" for v in variants]
        # those before it built; those after it were never tried: check them in a fresh process
        return (
            [None] * at
            + [f"{variants[at].get('label', variants[at]['name'])}: {what}"]
            + self.check(variants[at + 1 :], timeout_s)
        )

    def run(self, job: dict, timeout_s: float, base_rows: dict[str, dict]) -> tuple[list[dict], list[str]]:
        """Measure one group (`job["variants"]` at length `job["n"]`). Returns (rows, redo): the
        rows it has, and the labels of variants that lost their measurement because another one
        crashed or hung the process (the caller runs them again without it). A failure is the
        failing variant's status, never an exception."""
        labels = list(base_rows)
        why = self._ensure_started()
        if why:
            return [{**base_rows[lb], "status": "error", "reason": why} for lb in labels], []
        if self._log is not None:
            os.ftruncate(self._log, 0)  # so that a crash's tail is this group's
        kills_before = _oom_kills()
        msg, current = self._exchange(job, timeout_s)
        if msg == "broken":
            return self._died(base_rows, current, kills_before)
        if isinstance(msg, dict) and "rows" in msg:
            return msg["rows"], []
        if isinstance(msg, dict) and "failed" in msg:  # the group failed outside any point's own handling
            culprit = current if current in base_rows else None
            reason = f"{self.label}: {msg['failed']}"
            if culprit is None:
                return [{**base_rows[lb], "status": "error", "reason": reason} for lb in labels], []
            return [{**base_rows[culprit], "status": "error", "reason": reason}], [lb for lb in labels if lb != culprit]
        if msg == "timeout":
            self.kill()
            culprit = current if current in base_rows else None
            if culprit is None:
                return [
                    {
                        **base_rows[lb],
                        "status": "timeout",
                        "reason": f"the group ran past the {timeout_s:g} s "
                        f"timeout between calls; {self.label} was killed",
                    }
                    for lb in labels
                ], []
            row = {
                **base_rows[culprit],
                "status": "timeout",
                "reason": f"a call ran past the {timeout_s:g} s timeout; {self.label} was killed",
            }
            return [row], [lb for lb in labels if lb != culprit]
        if msg == "garbled":
            self.kill()
            return [
                {**base_rows[lb], "status": "error", "reason": f"{self.label} sent an unreadable result"}
                for lb in labels
            ], []
        return self._died(base_rows, current, kills_before)

    def _died(self, base_rows: dict, current: str | None, kills_before: int) -> tuple[list[dict], list[str]]:
        """The child ended without a result: say why, on evidence, for the variant in its call."""
        code = None
        if self.proc is not None:
            try:
                code = self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                code = self.proc.wait()
        tail = self._log_tail()
        self.kill()  # the process group: whatever the plugin started goes too
        after = _oom_kills()
        oom_killed = kills_before >= 0 and after > kills_before
        what = (
            "exited with status 0 before reporting"
            if code == 0
            else f"was killed by {_signal_name(code)}"
            if code is not None and code < 0
            else f"exited with status {code}"
        )
        if code == -signal.SIGKILL and oom_killed:
            failure = {
                "status": "oom",
                "reason": f"{self.label} was killed by the kernel's OOM killer "
                f"(its oom_kill count rose {kills_before} -> {after})",
            }
        else:
            failure = {
                "status": "error",
                "reason": f"{self.label} {what}" + (f"; its last output: {tail}" if tail else ""),
                "crashed": True,
            }
        labels = list(base_rows)
        if current in base_rows:
            return [{**base_rows[current], **failure}], [lb for lb in labels if lb != current]
        return [{**base_rows[lb], **failure} for lb in labels], []

    def __enter__(self) -> MeasuringProcess:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


if __name__ == "__main__":
    main()
