"""`effattn bench --task`: train the backbone per (variant, length, seed); rows like any sweep's."""

from __future__ import annotations

import json
import traceback

from ..env import environment
from ..errors import EffattnError
from ..spec import Variant
from ..store import DONE_STATUSES, point_key
from ..tasks.base import Task
from ..tasks.train import TrainSpec, train_task
from .sweep import _log, open_results


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
    from .executors import Job, LocalExecutor

    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise EffattnError(f"seeds must be an integer >= 1, got {seeds!r}")
    if not variants:
        raise EffattnError("no attention variant given")
    for n in seq_lens:
        task.check_length(n)
    executor = executor or LocalExecutor()
    local = not getattr(executor, "concurrent", False)  # runs one by one here: their loss can be shown
    rf = open_results(out, resume=resume, overwrite=overwrite, executor=executor.name, log=log or _log)
    rf.executor = executor.name
    rows = []
    try:
        done = {point_key(r) for r in rf.existing if r.get("status") in DONE_STATUSES}
        todo = [(v, n, s) for v in variants for n in seq_lens for s in range(seeds)]
        executor.open("cpu")
        try:
            for i, (v, n, seed) in enumerate(todo, 1):
                base = task_base_row(task, v, n, seed, spec)
                if point_key(base) in done:
                    continue
                header = f"[{i}/{len(todo)}] {v.label} n={n} seed={seed}: training {spec.steps} steps"
                executor.submit(
                    Job(
                        i, train_job, (task, v, n, spec, seed, base, log if local else None, header), base, (v, n, seed)
                    )
                )
            submitted, finished = executor.pending(), 0
            if log and not local:
                log(f"{submitted} runs submitted to {executor.describe()}")
            while executor.pending():
                job, row = executor.next_done()
                v, n, seed = job.info
                finished += 1
                if not isinstance(row.get("env"), dict):
                    row["env"] = environment()
                row = rf.append(row)
                rows.append(row)
                if log:
                    acc = (
                        f"accuracy {row['test_accuracy']:.3f}, loss {row['final_loss']:.3f}, "
                        f"{row['train_time_s']:.0f} s"
                        if row["status"] == "ok"
                        else f"{row['status']}: {row['reason']}"
                    )
                    log(f"    -> {acc}" if local else f"[{finished}/{submitted}] {v.label} n={n} seed={seed}: {acc}")
        except BaseException:
            executor.cancel()
            raise
        finally:
            executor.close()
    finally:
        rf.close()
    return rows


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
