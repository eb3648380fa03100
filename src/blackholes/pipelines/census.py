"""``census``: scan many models at once — locally on a process pool, or on a Dask cluster.

The unit of work is one model matrix: :func:`~blackholes.pipelines.census_scan.scan_one` takes a :class:`Task` (a source
as ``scan`` accepts it, which matrix, the scan options), loads it with ``load_matrix``,
runs ``scan`` and returns a ``ScanOutcome`` — one flat row for ``census.jsonl`` plus
the model's full scan JSON. The local pool and Dask run exactly that function; only
the driver writes files, so a Dask worker needs to read its model, never ``--out``.

An output folder holds::

    census.jsonl            one row per model matrix, appended (and fsynced) as each finishes
    census.md, census.html  the summary (render/census.py)
    models/<name>.json      each model's full scan JSON (and <name>.mask.safetensors with masks=True)
    plots/*.png             the summary's figures

Re-running into the same folder skips every model matrix whose row is already there
without an error, for the same source, request, options and resolved revision
(``redo=True`` scans again; the newest row of a model is the one that counts).

>>> r = census(["org/model-a", "./model-b"], out="census")    # doctest: +SKIP
>>> [(row["source"], row["black_hole_tokens"]) for row in r.rows]  # doctest: +SKIP

On a Dask cluster (``pip install "blackholes[cluster]"``), every worker must be able to read
the models (a shared path, the Hub cache, a URL) and have blackholes installed::

    dask scheduler                                  # on one machine: listens on tcp://HOST:8786
    dask worker tcp://HOST:8786 --nworkers 4 --nthreads 1     # on each machine
    blackholes census --hf-cache --out census --scheduler tcp://HOST:8786

On SLURM or PBS, dask-jobqueue starts the workers as jobs::

    from dask_jobqueue import SLURMCluster          # or PBSCluster
    from distributed import Client
    cluster = SLURMCluster(cores=4, processes=4, memory="32GB", walltime="02:00:00")
    cluster.scale(jobs=8)
    blackholes.census(sources, out="census", scheduler=Client(cluster))

The work runs on :mod:`blackholes.pipelines.runner` (the one runner of every many-task
job). A worker that dies mid-model has its task moved to another worker by Dask; after the
scheduler's ``distributed.scheduler.allowed-failures`` deaths (default 3) the model is an
error row. The local pool does the same (``retries``), running such a model alone.
Ctrl-C, SIGTERM and SIGHUP keep every finished row; the same command again goes on.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from blackholes import defaults
from blackholes.errors import BlackholesError
from blackholes.pipelines.census_scan import (  # noqa: F401 (the census's public names, in one place)
    MATRIX_CHOICES, ScanOutcome, Task, analysis_columns, build_row, error_row, estimate_bytes, follow_ups,
    hole_digests, plan, scan_one, scan_options, task_files,
)
from blackholes.pipelines.census_store import CensusStore, check_census_dir, latest_rows, read_rows  # noqa: F401
from blackholes.pipelines.runner import one_line  # noqa: F401
from blackholes.sources.listing import expand_sources, resolve_revision  # noqa: F401


def _cli(group: str, help: str, **more) -> dict:
    return {"cli": {"group": group, "help": help, **more}}


@dataclass(frozen=True)
class CensusOptions:
    """How a census scans and where it runs; every default of ``census`` and ``blackholes census``.

    >>> CensusOptions().matrix, CensusOptions().retries
    ('both', 2)
    """

    matrix: str = field(default="both", metadata=_cli(
        "which models", "the input embedding, the output matrix, or both where untied", choices=MATRIX_CHOICES))
    near: int | None = field(default=None, metadata=_cli(
        "analysis (as scan)", "near-duplicate clusters within K ULPs (K = {const} when given bare)",
        metavar="K", nargs="?", const=defaults.NEAR_ULPS, type=int))
    indicators: bool = field(default=False, metadata=_cli(
        "analysis (as scan)", "under-trained token indicators and candidates"))
    masks: bool = field(default=False, metadata=_cli("analysis (as scan)", "also write each model's mask to DIR/models/"))
    verify: bool = field(default=False, metadata=_cli(
        "analysis (as scan)", "then verify each model's hole members and candidates with the model itself "
        "(as `blackholes verify`; one more runner task per model)"))
    workers: int | None = field(default=None, metadata=_cli(
        "execution", "local processes (default: the cores; fewer when the models would not fit in memory)",
        metavar="N", type=int))
    scheduler: object = field(default=None, metadata=_cli(
        "execution", "run on a Dask cluster, e.g. tcp://HOST:8786 (default: $DASK_SCHEDULER_ADDRESS)",
        metavar="ADDRESS"))
    redo: bool = field(default=False, metadata=_cli("execution", "scan again the models DIR already has"))
    retries: int = field(default=2, metadata=_cli(
        "execution", "local pool: times a model whose worker process died is run again, alone", metavar="N",
        type=int))
    connect_timeout: float = field(default=10.0, metadata=_cli(
        "execution", "seconds to reach the Dask scheduler", metavar="S", type=float))
    memory_budget: int | None = None  # bytes for the models scanned at once (default: 0.8 x available)
    summary: bool = True  # write census.md / census.html

    def check(self) -> None:
        if self.matrix not in MATRIX_CHOICES:
            raise BlackholesError(f"--matrix must be one of {', '.join(MATRIX_CHOICES)}, not {self.matrix!r}")
        for name in ("workers", "retries"):
            value = getattr(self, name)
            least = 1 if name == "workers" else 0
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < least):
                raise BlackholesError(f"--{name} must be at least {least}, got {value!r}")
        if self.near is not None and (isinstance(self.near, bool) or not isinstance(self.near, int) or self.near < 0):
            raise BlackholesError(f"--near must be a whole number of ULPs (0 or more), got {self.near!r}")
        if not (isinstance(self.connect_timeout, (int, float)) and 0 < self.connect_timeout <= 3600):
            raise BlackholesError(f"--connect-timeout must be between 0 and 3600 seconds, got {self.connect_timeout!r}")


def census_options(**options) -> CensusOptions:
    """Options by name, checked (one line for a name census does not know, or a bad value)."""
    known = {f.name for f in dataclasses.fields(CensusOptions)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise BlackholesError(f"census() got an unknown option {unknown[0]!r} (known: {', '.join(sorted(known))})")
    opts = CensusOptions(**options)
    opts.check()
    return opts


@dataclass
class CensusResult:
    """The rows of a census (one per model matrix, in source order) and what this run did.

    >>> r = census(["org/model"], out="census")   # doctest: +SKIP
    >>> r.failed, r.skipped, r.to_pandas()        # doctest: +SKIP
    """

    rows: list[dict]
    out: Path | None = None
    scanned: int = 0
    skipped: int = 0
    failed: int = 0
    interrupted: bool = False
    seconds: float = 0.0
    summary: tuple | None = None  # (census.md, census.html) when written
    bytes_read: int = 0
    retried: int = 0  # models started again after their worker died
    stopped_by: str | None = None  # the signal that stopped the census ("SIGINT", "SIGTERM", "SIGHUP")

    def to_json(self) -> dict:
        return {
            "out": str(self.out) if self.out is not None else None,
            "scanned": self.scanned,
            "skipped": self.skipped,
            "failed": self.failed,
            "interrupted": self.interrupted,
            "seconds": self.seconds,
            "bytes_read": self.bytes_read,
            "retried": self.retried,
            "rows": self.rows,
        }

    def to_pandas(self):
        """The rows as a ``pandas.DataFrame`` (one row per model matrix)."""
        try:
            import pandas as pd
        except ImportError:
            raise BlackholesError("to_pandas() needs pandas (pip install pandas); the rows are in .rows") from None
        return pd.DataFrame(self.rows)

    def _repr_markdown_(self, top: int = 10) -> str:
        """What Jupyter shows: what this run did, and the models with the most dead tokens as a table."""
        where = f" in `{self.out}`" if self.out is not None else ""
        state = " — **interrupted**" + (f" ({self.stopped_by})" if self.stopped_by else "") if self.interrupted else ""
        lines = [f"**Census{where}**: {len(self.rows):,} rows ({self.scanned:,} scanned now, {self.skipped:,} already "
                 f"there, {self.failed:,} failed, {self.retried:,} retried){state}"]
        good = sorted((r for r in self.rows if r.get("error") is None),
                      key=lambda r: -(r.get("black_hole_tokens") or 0))
        if good:
            lines += ["", "| model | matrix | holes | black-hole tokens |", "|---|---|---:|---:|"]
            lines += [f"| `{r['source']}` | {r.get('matrix') or '–'} | {r.get('holes') if r.get('holes') is not None else '–'} "
                      f"| {r.get('black_hole_tokens') or 0:,} |" for r in good[:top]]
            if len(good) > top:
                lines.append(f"\n… and {len(good) - top:,} more (`rows` or `to_pandas()` has them all)")
        failed = [r for r in self.rows if r.get("error") is not None]
        lines += [f"\n*failed:* `{r['source']}`: {r['error']}" for r in failed[:top]]
        return "\n".join(lines)



# ---------------------------------------------------------------------------- progress


class Progress:
    """One line per finished model: ``[done/total, failed, bytes read, ETA] source: result``."""

    def __init__(self, total: int, log):
        self.total, self.log = total, log
        self.done = self.failed = self.bytes = 0
        self.t0 = time.perf_counter()

    def finished(self, row: dict, more: int = 0) -> None:
        self.total += more
        self.done += 1
        self.failed += row.get("error") is not None
        self.bytes += row.get("bytes_read") or 0
        if self.log is None:
            return
        elapsed = time.perf_counter() - self.t0
        eta = elapsed / self.done * (self.total - self.done)
        status = f"[{self.done}/{self.total}, {self.failed} failed, {human_bytes(self.bytes)} read, ETA {eta:.0f} s]"
        self.log(f"{status} {describe(row)}")


def describe(row: dict) -> str:
    """``source (matrix): 13 holes, 2,100 black-hole tokens, largest 814`` or the error."""
    name = row["source"] + (f" ({row['matrix']})" if row.get("matrix") else "")
    if row.get("error") is not None:
        return f"{name}: error: {row['error']}"
    holes = "1 hole" if row["holes"] == 1 else f"{row['holes']:,} holes"
    return (f"{name}: {holes}, {row['black_hole_tokens']:,} black-hole tokens, "
            f"largest {row['largest_hole']:,} ({row['seconds']:.2f} s)")


def human_bytes(n: float) -> str:
    """
    >>> human_bytes(1_560_000_000), human_bytes(512)
    ('1.6 GB', '512 B')
    """
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"



# ---------------------------------------------------------------------------- the API


def census(sources=(), *, out: str | os.PathLike | None = None, from_file=None, hf_cache: bool = False,
           ollama: bool = False, log=None, **options) -> CensusResult:
    """Scan every source (anything ``scan`` accepts) and return one row per model matrix.

    ``out``: the census folder (rows appended to ``census.jsonl`` as they finish, scan JSONs
    in ``models/``, ``census.md``/``census.html``); ``None`` keeps everything in memory.
    ``options``: the fields of :class:`CensusOptions` — ``matrix`` ("input", "output" or
    "both": the output matrix, and the input embedding too where untied), ``near`` and
    ``indicators`` (scan's analysis options), ``scheduler`` (a Dask scheduler address or an
    open ``distributed.Client``; ``None`` uses ``$DASK_SCHEDULER_ADDRESS``, else a Client
    already open in this process, else a local process pool; ``"local"`` (or giving
    ``workers``, its size; default: the cores) forces the pool), ``redo``, ``retries``, ...
    ``log`` gets one line per finished model.

    >>> r = census(["org/model", "./other"], out="census", workers=2)   # doctest: +SKIP
    >>> r.rows[0]["black_hole_tokens"], r.to_pandas()                   # doctest: +SKIP
    """
    from blackholes.pipelines.runner import cluster

    t0 = time.perf_counter()
    opts = census_options(**options)
    names = expand_sources(sources, from_file=from_file, hf_cache=hf_cache, ollama=ollama)
    if not names:
        raise BlackholesError("no models to survey: name SOURCEs, or use --from-file, --hf-cache or --ollama")
    tasks = plan(names, matrix=opts.matrix, options=scan_options(opts.near, opts.indicators),
                 masks=opts.masks and out is not None)
    store = CensusStore(out) if out is not None else None  # checked before any work; nothing written yet
    if store is not None:  # no file of the census may replace a file a model reads
        store.check_inputs(tasks, task_files)
    with cluster(opts.scheduler, workers=opts.workers, timeout=opts.connect_timeout) as client:
        if store is not None:
            store.open()
        result = _run(tasks, store, client, opts, log)
    result.seconds = time.perf_counter() - t0
    if store is not None and opts.summary and not result.interrupted:
        from blackholes.render.census import write_summary

        result.summary = write_summary(store.out, list(latest_rows(store.rows()).values()))
    return result


def _run(tasks: list[Task], store, client, opts: CensusOptions, log) -> CensusResult:
    """Skip what the folder already has, run the rest, append each row as it arrives."""
    from blackholes.pipelines.runner import run_tasks

    workers = None if client is not None else (opts.workers or os.cpu_count() or 1)
    book = _Book(store, opts.redo, CensusResult(rows=[], out=store.out if store is not None else None), workers)
    book.verify = opts.matrix if opts.verify else None
    todo = book.still_to_do(tasks)
    book.progress = Progress(len(todo), log)
    if log is not None:
        where = "a Dask cluster" if client is not None else f"{workers} local processes"
        done = f", {book.result.skipped:,} already done in {store.out}" if book.result.skipped else ""
        log(f"census: {len(todo):,} model matrices to scan on {where}{done}")
    jobs = book.jobs(todo)
    if client is None:  # the largest first: the pool then packs the small ones beside it
        jobs.sort(key=lambda job: -job.memory)
    try:
        if jobs:
            run_tasks(jobs, book.handle, workers=workers, client=client, scheduler="local" if client is None else None,
                      memory_budget=opts.memory_budget, retries=opts.retries, progress=None, log=log)
    except KeyboardInterrupt as e:  # errors.Stopped: the runner kept every finished row
        book.result.interrupted = True
        book.result.stopped_by = getattr(e, "signal_name", None) or "SIGINT"
    order = {t.source: i for i, t in enumerate(tasks)}
    rows = book.rows.values()
    book.result.rows = sorted(rows, key=lambda r: (order.get(r["source"], 0), r.get("request") != "default"))
    return book.result


class _Book:
    """The parent's bookkeeping: rows found in the folder, rows arriving, counts, progress."""

    def __init__(self, store, redo: bool, result: CensusResult, workers: int | None = None):
        self.store, self.redo, self.result, self.workers = store, redo, result, workers
        self.previous = latest_rows(store.rows()) if store is not None else {}
        self.rows: dict[tuple, dict] = {}  # task key -> its row, for this census's result
        self.progress: Progress | None = None
        self.verify = None  # census --verify: its --matrix; a verification task follows each model's first scan

    def still_to_do(self, candidates: list[Task]) -> list[Task]:
        """The tasks without a finished row; a finished row stands in for its task (resume),
        and may lead to a follow-up (the input matrix of an untied model)."""
        todo, pending = [], deque(candidates)
        while pending:
            task = pending.popleft()
            old = None if self.redo else self.previous.get(task.key)
            if _finished(old, task) and not (self.verify and _unverified(task, old, self.verify)):
                self.rows[task.key] = old
                self.result.skipped += 1
                pending.extend(follow_ups(task, old))
            else:
                todo.append(task)
        return todo

    def jobs(self, tasks: list[Task]) -> list:
        """The runner's tasks: scan_one of each; on the local pool with its memory estimate, and
        one hashing thread each when several processes share the cores."""
        from blackholes.pipelines.runner import Task as Job

        out = []
        for t in tasks:
            if self.workers is not None and self.workers > 1:
                t = dataclasses.replace(t, threads=1)
            memory = estimate_bytes(t) if self.workers is not None else 0
            out.append(Job(key=f"census-{t.name}", fn=scan_one, args=(t,), memory=memory, label=t.source))
        return out

    def handle(self, job, outcome) -> list:
        """A finished task: files and row written first, then counted; returns its follow-ups."""
        if job.key.startswith("verify-"):
            return self._verified(job, outcome)
        task = job.args[0]
        scanned = outcome.value if outcome.error is None else ScanOutcome(error_row(task, outcome.error))
        row = scanned.row
        if self.store is not None:
            self.store.write_model(task, scanned)
            self.store.append(row)
        self.rows[task.key] = row
        self.result.scanned += 1
        self.result.failed += row.get("error") is not None
        self.result.bytes_read += row.get("bytes_read") or 0
        self.result.retried += outcome.attempts - 1
        more = self.still_to_do(follow_ups(task, row))
        self.progress.finished(row, more=len(more))
        return self.jobs(more) + self._verification(task, row, scanned.doc)

    def _verification(self, task: Task, row: dict, doc) -> list:
        if not (self.verify and _unverified(task, row, self.verify)):
            return []
        from blackholes.pipelines.census_verify import token_ids, verify_job

        return [verify_job(task, token_ids(doc, row))]

    def _verified(self, job, outcome) -> list:
        """A model's verification: its counts join its scan row (appended again: the newest row wins)."""
        from blackholes.pipelines.census_verify import merged_row

        task = job.kwargs["task"]
        row = merged_row(self.rows[task.key], outcome.value, outcome.error)
        if self.store is not None:
            if outcome.value is not None:
                from blackholes.io.atomic import write_json

                write_json(self.store.models / f"{task.name}.verification.json", {"verification": outcome.value})
                row["verification_json"] = f"models/{task.name}.verification.json"
            self.store.append(row)
        self.rows[task.key] = row
        return []


# the fields a row needs to stand for its model in the result and the summary
_ROW_NEEDS = ("options", "matrix", "holes", "black_hole_tokens", "largest_hole", "hole_sizes")


def _finished(row: dict | None, task: Task) -> bool:
    """Whether ``row`` already answers ``task``: scanned without error, at the same revision,
    with its mask when masks are asked for. A row missing fields is not finished."""
    if row is None or row.get("error") is not None or (task.masks and not row.get("mask")):
        return False
    if any(name not in row for name in _ROW_NEEDS):
        return False
    return _same_revision(task, row)


def _unverified(task: Task, row: dict | None, matrix: str) -> bool:
    from blackholes.pipelines.census_verify import needs_verification

    return needs_verification(task, row, matrix)


def _same_revision(task: Task, row: dict) -> bool:
    """A row still describes the source when the revision we can resolve here matches its own
    (a source whose revision cannot be told here without reading it counts as unchanged)."""
    now = resolve_revision(task.source)
    return now is None or now == row.get("revision")
