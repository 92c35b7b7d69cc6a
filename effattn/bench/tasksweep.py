"""`effattn bench --task`: train the backbone per (variant, length, seed); rows like any sweep's."""

from __future__ import annotations

import json
import traceback

from ..env import environment
from ..errors import EffattnError
from ..spec import Variant
from ..tasks.base import Task
from ..tasks.train import TrainSpec, train_task
from .executors import Job
from .runner import Chain, Resumed, Runner, Step, log_line, open_results


def train_job(
    task: Task, v: Variant, n: int, spec: TrainSpec, seed: int, base: dict, log=None, header: str = ""
) -> dict:
    """Train and evaluate one (variant, length, seed), wherever the executor runs it. Never raises
    for the run's own failure: the row says what happened. `log` (local runs only) gets `header`
    and the loss as training goes."""
    if log:
        log(header)
    try:
        res = train_task(
            task,
            v,
            n,
            spec,
            seed,
            progress=(lambda s, t, loss: log(f"    step {s}/{t} loss {loss:.3f}")) if log else None,
        )
        row = {**base, **res, "status": "ok", "reason": None}
    except EffattnError as e:
        row = {**base, "status": "unsupported", "reason": str(e)}
    except Exception as e:  # noqa: BLE001 - recorded, the sweep goes on
        row = {
            **base,
            "status": "error",
            "reason": f"{type(e).__name__}: {e}",
            "traceback": traceback.format_exc(limit=5),
        }
    row["env"] = environment()
    return row


def task_base_row(task: Task, v: Variant, n: int, seed: int, spec: TrainSpec) -> dict:
    return {
        "kind": "task",
        "variant": v.name,
        "options": v.options,
        "label": v.label,
        "seq_len": n,
        "seed": seed,
        "task": task.name,
        "task_options": task.options(),
        "train_spec": json.loads(json.dumps(spec.__dict__)),
    }


class TaskChain(Chain):
    """Training runs one after another (locally, where each shows its loss as it trains), or one
    run per chain (on a concurrent executor, where they run side by side)."""

    def __init__(self, items: list[tuple], make_job):
        self.items, self.make_job = iter(items), make_job

    def next(self) -> Step:
        for item in self.items:
            return Step([], self.make_job(*item))
        return Step([])

    def finished(self, job: Job, row) -> list[dict]:
        return [row]


def run_task_sweep(
    task: Task,
    variants: list[Variant],
    seq_lens: list[int],
    seeds: int,
    spec: TrainSpec,
    out,
    resume: bool = False,
    log=None,
    executor=None,
    overwrite: bool = False,
) -> list[dict]:
    """Train every (variant, length, seed) not yet done in `out` (a path or an open
    `ResultsFile`); rows are written as runs finish. On the local executor runs go one by one with
    their loss printed; on Ray they run side by side."""
    from .executors import LocalExecutor

    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise EffattnError(f"seeds must be an integer >= 1, got {seeds!r}")
    if not variants:
        raise EffattnError("no attention variant given")
    for n in seq_lens:
        task.check_length(n)
    executor = executor or LocalExecutor()
    local = not getattr(executor, "concurrent", False)  # runs one by one here: their loss can be shown
    rf = open_results(out, resume=resume, overwrite=overwrite, executor=executor.name, log=log or log_line)
    resumed = Resumed(rf.existing)
    todo = [(v, n, s) for v in variants for n in seq_lens for s in range(seeds)]
    items = []
    for i, (v, n, seed) in enumerate(todo, 1):
        base = task_base_row(task, v, n, seed, spec)
        if resumed.done(base) is None:
            items.append((i, v, n, seed, base))

    def make_job(i, v, n, seed, base):
        header = f"[{i}/{len(todo)}] {v.label} n={n} seed={seed}: training {spec.steps} steps"
        args = (task, v, n, spec, seed, base, log if local else None, header)
        return Job(i, train_job, args, base, (v, n, seed))

    chains = [TaskChain(items, make_job)] if local else [TaskChain([it], make_job) for it in items]
    runner = Runner(rf, executor, on_row=_reporting(log, local, len(items)))
    if log and not local:
        log(f"{len(items)} runs submitted to {executor.describe()}")
    try:
        return runner.run(chains)
    finally:
        runner.close()


def _reporting(log, local: bool, submitted: int):
    """What is said of each finished run: its accuracy, loss and time, or what became of it."""
    count = [0]

    def said(row):
        if not log:
            return
        count[0] += 1
        acc = (
            f"accuracy {row['test_accuracy']:.3f}, loss {row['final_loss']:.3f}, {row['train_time_s']:.0f} s"
            if row["status"] == "ok"
            else f"{row['status']}: {row['reason']}"
        )
        where = f"{row['label']} n={row['seq_len']} seed={row['seed']}"
        log(f"    -> {acc}" if local else f"[{count[0]}/{submitted}] {where}: {acc}")

    return said


def task_summary(rows: list[dict]):
    import pandas as pd

    df = pd.DataFrame([r for r in rows if r.get("kind") == "task"])
    if df.empty:
        return df
    ok = df[df["status"] == "ok"]
    if ok.empty:
        return df[["label", "seq_len", "status", "reason"]]
    g = ok.groupby(["label", "seq_len"], sort=False)
    out = g.agg(
        accuracy_mean=("test_accuracy", "mean"),
        accuracy_std=("test_accuracy", "std"),
        seeds=("seed", "count"),
        final_loss=("final_loss", "mean"),
        train_time_s=("train_time_s", "mean"),
        tokens_per_s=("tokens_per_s", "mean"),
    ).reset_index()
    out["accuracies"] = [
        ", ".join(f"{a:.3f}" for a in ok[(ok["label"] == r.label) & (ok["seq_len"] == r.seq_len)]["test_accuracy"])
        for r in out.itertuples()
    ]
    return out
