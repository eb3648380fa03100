"""``sweep``: many training runs from one grid of options, batched, with a census of every step.

A grid names, for any ``train`` option, a list of values (``--sigma 0,1e-4,1e-3``, ``--seeds
0-7``, ``--sigma log:1e-6:1e-1:25``, ``--precision bf16,bf16-mixed``); the sweep trains the
Cartesian product (run ids in grid order, the last swept option varying fastest), each run the
same run as ``blackholes train`` with the options its row records. Runs of one shape and
precision are trained together as one stacked model (:mod:`blackholes.training.batched`),
at most :data:`RUNS_PER_BATCH` at a time; a batch is one task, run in this process, on a local
process pool (one thread per batch) or on a Dask cluster, all through
:mod:`blackholes.pipelines.runner`. During training every run's
embedding matrix is grouped exactly at every step (the grouping of
:mod:`blackholes.analysis.lifecycle`), so no recording is needed to say how many holes there
are, whether the never-seen bytes are still one point, when the hole freezes and first splits.

An output folder holds::

    sweep.json          the grid; re-running with the same grid resumes, another grid is refused
    runs.jsonl          one row per finished run, appended (and fsynced) as each batch finishes
    parts/              each batch's per-step arrays, written before its rows (a row names its part)
    steps.safetensors   per-step arrays [runs, steps + 1] of every finished run, in run order, rebuilt
                        from parts/ whenever a sweep stops (finished, interrupted, or failed); runs with
                        fewer steps than the longest are padded (NaN, -1, False)
    recordings/         full recordings of the runs asked for (``record``), byte for byte `train`'s

A row is finished when it has no error and its part file is there; a re-run trains the others.
Ctrl-C, SIGTERM and SIGHUP keep every finished batch (a batch in flight is lost and trained again
next time). The rooms: :mod:`~blackholes.pipelines.sweep_grid` (the grid),
:mod:`~blackholes.pipelines.sweep_batch` (a batch and its step census),
:mod:`~blackholes.pipelines.sweep_store` (the folder), :mod:`~blackholes.pipelines.sweep_report` (the result).

**Exact.** A run equals ``blackholes train`` with its row's options (``numerics`` included),
embeddings bit for bit at every step: stacked runs are eager runs, tested for bf16, fp32 and bf16-mixed,
K = 1, 3, 8, one and two windows per step, runs differing in corpus, seed, σ, init, lr, Adam
settings and clipping. Each batch first trains two steps both ways
(:func:`~blackholes.training.batched.agrees_with_single`); where they differ, its runs are trained
one at a time (``batched: false`` and a ``note`` in their rows).

**Numerics.** The sweep never changes a run's numerics (``--numerics eager|compiled``, a grid
option like any other): compiled and eager numerics round differently (``benchmarks/numerics_bisect.py``),
so compiling is not a speed choice. Eager runs are stacked and never compiled; each
``numerics="compiled"`` run is trained alone with ``train``'s compiled forward. The row's
``options.numerics`` (and ``compiled``) say which, so ``train`` with those options repeats it.

>>> r = sweep("s", sigma="0,1e-3", seed="0-1", steps=200)          # doctest: +SKIP
>>> [(row["options"]["sigma"], row["final"]["holes"]) for row in r.runs]   # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from blackholes.errors import BlackholesError
from blackholes.pipelines.sweep_batch import (  # noqa: F401 (the sweep's public names, in one place)
    RUNS_PER_BATCH, STEP_ARRAYS, BatchOutcome, BatchTask, StepCensus, decide_compile, options_of, plan_batches,
    train_batch,
)
from blackholes.pipelines.sweep_grid import (  # noqa: F401
    ALIASES, CONFIRM_RUNS, FIXED_ONLY, SWEEPABLE, Grid, grid_bound, parse_run_ids, parse_values,
)
from blackholes.pipelines.sweep_report import SweepResult, collect, short, summary_text  # noqa: F401
from blackholes.pipelines.sweep_store import FORMAT, SweepStore  # noqa: F401
from blackholes.training.config import SHAPE_FIELDS, TrainConfig  # noqa: F401


def _cli(help: str, **more) -> dict:
    return {"cli": {"help": help, **more}}


@dataclass(frozen=True)
class SweepOptions:
    """How a sweep runs (the grid itself is train options); every default of ``sweep`` and
    ``blackholes sweep``.

    >>> SweepOptions().runs_per_batch
    16
    """

    record: str = field(default="none", metadata=_cli(
        "write full recordings (as `train`) of these runs to DIR/recordings/, e.g. 0,3,8-11", metavar="none|all|IDS"))
    runs_per_batch: int = field(default=RUNS_PER_BATCH, metadata=_cli(
        "runs stacked in one model at most", metavar="K", type=int))
    workers: int | None = field(default=None, metadata=_cli(
        "local processes (default: the cores, at most one per batch; 1: this process)", metavar="N", type=int))
    scheduler: object = field(default=None, metadata=_cli(
        "run the batches on a Dask cluster, e.g. tcp://HOST:8786 (default: $DASK_SCHEDULER_ADDRESS, else local)",
        metavar="ADDRESS"))
    connect_timeout: float = field(default=10.0, metadata=_cli(
        "seconds to reach the Dask scheduler", metavar="S", type=float))
    yes: bool = field(default=False, metadata=_cli(f"train a grid of more than {CONFIRM_RUNS:,} runs without asking"))
    compile: str = "auto"  # "never": refuse compiled numerics (--no-compile)
    check: bool = True  # each batch first checks that its stacked step reproduces the single-run step

    def check_values(self) -> None:
        for name, least in (("runs_per_batch", 1), ("workers", 1)):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < least):
                raise BlackholesError(f"--{name.replace('_', '-')} must be at least {least}, got {value!r}")


def sweep_options(options: dict) -> tuple[SweepOptions, dict]:
    """Split keyword options into the sweep's own (checked) and the grid's train options."""
    own = {f.name for f in dataclasses.fields(SweepOptions)}
    opts = SweepOptions(**{k: v for k, v in options.items() if k in own})
    opts.check_values()
    return opts, {k: v for k, v in options.items() if k not in own}


def sweep(out: str | os.PathLike, *, confirm=None, progress: bool = False, log=None, on_batch=None,
          **options) -> SweepResult:
    """Train every run of the grid ``options`` (train options: a value, a list, or a text such as
    ``"0,1e-4"``, ``"0-7"``, ``"log:1e-6:1e-1:25"``), batched, into the folder ``out``.

    The other ``options`` are :class:`SweepOptions`: ``record`` (``"none"``, ``"all"`` or run
    ids such as ``"0,3,8-11"``: whose full recording to write), ``workers`` (local processes;
    default: the cores, at most one per batch; 1 trains here), ``scheduler`` (a Dask scheduler
    address or ``distributed.Client``: then its workers run the batches), ``runs_per_batch``,
    ``compile`` (``"auto"``: each run compiles as its ``numerics`` says; ``"never"`` refuses
    compiled numerics, see :func:`decide_compile`), ``yes``. A grid of more than
    :data:`CONFIRM_RUNS` runs needs ``yes=True`` (or ``confirm(runs)`` returning True), asked
    before any range is expanded. ``on_batch(task, outcome)`` is called after each batch is
    saved. Ctrl-C keeps the finished batches (``interrupted=True``); calling again with the same
    grid resumes.

    >>> r = sweep("s", sigma="0,1e-4,1e-3,1e-2", seed="0-7", precision="bf16,bf16-mixed")   # doctest: +SKIP
    >>> r.steps["holes"].shape, r.runs[0]["freeze_step"]                                 # doctest: +SKIP
    """
    from blackholes.pipelines.runner import cluster

    t0 = time.perf_counter()
    opts, train_options = sweep_options(options)
    bound = grid_bound(train_options)  # from the ranges' parameters: nothing expanded yet
    if bound > CONFIRM_RUNS and not opts.yes and not (confirm is not None and confirm(bound)):
        raise BlackholesError(f"the grid has {bound:,} runs (more than {CONFIRM_RUNS:,}); pass --yes "
                              "(yes=True) to train them all")
    grid = Grid.from_options(train_options)
    recorded = parse_run_ids(opts.record, grid.size)
    _check_sizes(grid)
    configs = _configs(grid)
    decide_compile(configs, opts.compile)  # refuses --no-compile with compiled numerics, before any training
    store = SweepStore(out)
    _check_recordings(configs, recorded, store.out)
    with cluster(opts.scheduler, workers=opts.workers, timeout=opts.connect_timeout) as client:
        store.open(grid, recordings=bool(recorded))
        result = _run(grid, configs, recorded, store, client, opts, progress, log, on_batch)
    result.seconds = time.perf_counter() - t0
    return result


def _check_sizes(grid: Grid) -> None:
    """Refuse per-step arrays that could not be held: runs x (steps + 1) x 29 bytes."""
    from blackholes.training.limits import available_memory

    steps = max(grid.swept.get("steps", [grid.fixed["steps"]]))
    need = grid.size * (int(steps) + 1) * (7 * 4 + 1)
    have = available_memory()
    if have is not None and need > have // 2:
        raise BlackholesError(f"the per-step arrays of {grid.size:,} runs x {int(steps) + 1:,} steps need "
                              f"{need / 1e9:,.1f} GB, more than half of this machine's available memory "
                              f"({have / 1e9:,.1f} GB); sweep fewer runs or steps")


def _configs(grid: Grid) -> dict[int, TrainConfig]:
    """Every run's config, validated, and its corpus read and checked (once per corpus and shape)."""
    from blackholes.training.loop import prepare_corpus

    corpora: dict[tuple, object] = {}
    configs = {}
    for r in range(grid.size):
        c = grid.config(r)
        try:
            c.validate()
            key = (str(c.corpus), c.vocab, c.context)
            if key not in corpora:
                corpora[key] = prepare_corpus(c)
        except BlackholesError as e:
            raise BlackholesError(f"run {r} ({_label(grid.swept_values(r))}): {e}") from None
        if c.corpus is not None:
            c.corpus = str(corpora[key].path)
        configs[r] = c
    return configs


def _label(values: dict) -> str:
    return ", ".join(f"{k}={short(v)}" for k, v in values.items()) or "the only run"


def _check_recordings(configs: dict[int, TrainConfig], recorded: set[int], out: Path) -> None:
    """Refuse recordings the disk cannot hold, or whose header safetensors cannot hold (one line)."""
    import shutil

    from blackholes.io.safetensors import MAX_HEADER
    from blackholes.training.limits import human_size, run_size

    if not recorded:
        return
    sizes = {r: run_size(configs[r]) for r in recorded}
    for r, size in sizes.items():
        if size.header_bytes > MAX_HEADER:
            raise BlackholesError(f"--record: run {r} would record {size.records:,} steps, a header beyond "
                                  "safetensors' limit; record fewer steps (--every K)")
    folder = out if out.is_dir() else out.parent
    free = shutil.disk_usage(folder if str(folder) else Path(".")).free
    need = sum(s.file_bytes for s in sizes.values())
    if need > free:
        raise BlackholesError(f"--record: {len(recorded):,} recordings would take {human_size(need)} but only "
                              f"{human_size(free)} is free in {folder}; record fewer runs or steps (--every K)")


def _run(grid, configs, recorded, store, client, opts: SweepOptions, progress, log, on_batch) -> SweepResult:
    from blackholes.pipelines.runner import Task, run_tasks

    rows = store.rows()
    todo = [r for r in range(grid.size) if not store.finished(rows.get(r), r in recorded)]
    result = SweepResult([], {}, [], [], grid, store.out, skipped=grid.size - len(todo))
    workers = opts.workers or default_workers(todo, configs)
    tasks = plan_batches(todo, configs, runs_per_batch=opts.runs_per_batch, workers=1 if client else workers,
                         record={r: store.recording_path(r) for r in recorded})
    workers = max(1, min(workers, len(tasks)))
    if not opts.check:
        tasks = [dataclasses.replace(t, check=False) for t in tasks]
    if log is not None:
        where = "a Dask cluster" if client is not None else f"{workers} local process{'es' * (workers > 1)}"
        done = f", {result.skipped:,} already done in {store.out}" if result.skipped else ""
        log(f"sweep: {len(todo):,} runs in {len(tasks):,} batches on {where}{done}")

    def handle(job, outcome):
        task = job.args[0]
        batch = outcome.value if outcome.error is None else train_batch_failed(task, outcome.error)
        store.save(task, batch)
        for row in batch.rows:
            rows[row["run"]] = row
            result.trained += 1
            result.failed += row.get("error") is not None
        if on_batch is not None:
            on_batch(task, batch)

    jobs = [Task(key=f"sweep-{t.name}", fn=train_batch, args=(t,), work=sum(c.steps for c in t.configs),
                 reports=True, label=t.name) for t in tasks]
    try:
        if jobs:
            run_tasks(jobs, handle, workers=workers if client is None else None, client=client,
                      scheduler="local" if client is None else None,
                      progress="run-step" if progress else None, log=log)
    except KeyboardInterrupt as e:  # errors.Stopped: the runner handed back every finished batch
        result.interrupted = True
        result.stopped_by = getattr(e, "signal_name", None) or "SIGINT"
    finally:
        collect(result, store, rows, grid)
    return result


def train_batch_failed(task: BatchTask, reason: str) -> BatchOutcome:
    """The rows of a batch that could not be trained where it was sent (its worker died, or the
    cluster lost it): the runner's one line is each run's error."""
    from blackholes.pipelines.sweep_batch import error_outcome

    return error_outcome(task, reason, 0.0)


def default_workers(runs: list[int], configs: dict[int, TrainConfig]) -> int:
    """The cores; but 1 (this process) for a sweep of less than ~10 s of training, which starting
    worker processes (each importing torch) would only slow down.

    >>> default_workers([0], {0: TrainConfig(steps=100)})
    1
    """
    from blackholes.training.limits import parameter_count

    # ~2 ms per run-step of the default recipe stacked (116,480 parameters, one window)
    seconds = sum(configs[r].steps * configs[r].batch * parameter_count(configs[r]) for r in runs) * 2e-3 / 116_480
    return 1 if seconds < 10 else os.cpu_count() or 1
