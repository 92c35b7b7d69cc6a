"""What became of one point, as data: a `Measurement` holds the spec that made it, its outcome and
what each stage found, and is turned into the results row in one place (`row`). A stage that ends
a point raises `PointEnded` with the status and the reason."""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from .spec import PointSpec
from .timing import GroupTiming, Timing

#: the longest reason and traceback a row keeps (a plugin's 8 MB message would swell the file)
MAX_REASON, MAX_TRACEBACK = 2000, 8000
#: a useful FLOP rate above this fraction of the measured matmul peak is a measurement fault
PEAK_FRACTION_MAX = 1.0


class PointEnded(Exception):
    """A stage found that the point cannot be `ok`: its status (oom, timeout, unsupported, error)
    and why."""

    def __init__(self, status: str, reason: str):
        super().__init__(reason)
        self.status, self.reason = status, reason


@dataclass
class Measurement:
    """One point's outcome and figures. Units are in the names. A figure the stages set is in the
    row (None where it was measured as unknown, e.g. memory whose profile lost its events); one
    that no stage reached is not."""

    spec: PointSpec
    status: str = "ok"
    reason: str | None = None
    traceback: str | None = None
    # the budget, before anything is allocated
    estimated_bytes: int | None = None
    input_bytes: int | None = None
    # the first call of the fresh module, and memory
    first_call_ms: float | None = None
    backend: str | None = None
    first_call_peak_mem_bytes: int | None = None
    retained_bytes: int | None = None
    peak_mem_bytes: int | None = None
    memory_unmeasured: str | None = None
    rss_peak_bytes: int | None = None
    # useful work
    attended_pairs: int | None = None
    flops: float | None = None
    exact: bool | None = None
    flops_basis: str | None = None
    # against exact softmax, and against the plugin's own pattern
    rel_err_vs_full: float | None = None
    cosine_vs_full: float | None = None
    error_note: str | None = None
    exact_check: str | None = None
    exact_errors: dict | None = None
    exact_tolerance: float | None = None
    rel_err_vs_own_dense: float | None = None
    own_dense_rows: int | None = None
    # decoding (--mode decode)
    decode_backend: str | None = None
    prefill_ms: float | None = None
    prefill_peak_mem_bytes: int | None = None
    cache_bytes: int | None = None
    step_read_bytes: int | None = None
    step_flops: float | None = None
    # the timed rounds: this point's, and its group's
    timing: Timing | None = None
    group: GroupTiming | None = None
    extra: dict = field(default_factory=dict)  # what a caller adds (an executor's failure, a probe's tag)

    def __post_init__(self):
        object.__setattr__(self, "_measured", set())

    def __setattr__(self, name, value):
        # a figure a stage set is in the row, None included ("measured: unknown"); one no stage
        # reached is left out (the stage did not run)
        if hasattr(self, "_measured"):
            self._measured.add(name)
        object.__setattr__(self, name, value)

    def end(self, status: str, reason: str) -> Measurement:
        self.status, self.reason = status, reason
        return self

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def row(self, env: dict | None = None) -> dict:
        """The results row: the point's identity and settings, then every figure measured."""
        row = self.spec.base_row()
        row["status"], row["reason"] = self.status, self.reason
        for f in fields(self):
            if f.name in ("spec", "status", "reason", "timing", "group", "extra"):
                continue
            if f.name in self._measured:
                row[f.name] = getattr(self, f.name)
        if self.timing is not None:
            row.update(self.timing.columns())
        if self.group is not None:
            row.update(self.group.columns())
        row.update(self.extra)
        if env is not None:
            row["env"] = env
        _rates(row, self.spec)
        for key, most in (("reason", MAX_REASON), ("traceback", MAX_TRACEBACK)):
            if isinstance(row.get(key), str) and len(row[key]) > most:
                row[key] = row[key][:most] + f"... ({len(row[key]) - most} more characters)"
        return row


def _rates(row: dict, spec: PointSpec) -> None:
    """Useful GFLOP/s and its fraction of the reference measured in the same rounds (a fraction
    above 1 is a measurement fault, flagged); for a decoding step, tokens per second and the
    bandwidth it reaches against the machine's."""
    if row.get("status") != "ok" or not row.get("time_ms"):
        row["gflops"] = None
        return
    s = row["time_ms"] / 1e3
    if spec.mode == "decode":
        row["tokens_per_s"] = spec.batch / s
        flops, read = row.get("step_flops"), row.get("step_read_bytes")
        row["gflops"] = flops / s / 1e9 if flops else None
        if row["gflops"] and row.get("matmul_peak_gflops"):
            row["peak_fraction"] = row["gflops"] / row["matmul_peak_gflops"]
        row["bandwidth_gbs"] = read / s / 1e9 if read else None
        if row["bandwidth_gbs"] and row.get("membw_peak_gbs"):
            row["bandwidth_fraction"] = row["bandwidth_gbs"] / row["membw_peak_gbs"]
        return
    counted = (row.get("exact") or row.get("flops_basis") == "algorithm") and spec.level == "attention"
    row["gflops"] = row["flops"] / s / 1e9 if counted and row.get("flops") else None
    peak = row.get("matmul_peak_gflops")
    if row["gflops"] and peak:
        row["peak_fraction"] = row["gflops"] / peak
        if row["peak_fraction"] > PEAK_FRACTION_MAX:
            row["fault"] = (
                f"useful FLOP rate {row['gflops']:.1f} GFLOP/s is {row['peak_fraction']:.0%} of the "
                f"matmul peak {peak:.1f} measured in the same rounds: the time, the FLOP count or the "
                "peak is wrong"
            )
