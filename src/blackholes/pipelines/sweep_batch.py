"""A sweep's batches: runs trained together as one stacked model, with the census of every step.

:func:`plan_batches` groups runs of one shape into :class:`BatchTask` s; :func:`train_batch`
trains one (stacked, or one run at a time where the stacked step does not reproduce the
single-run step here) and returns a :class:`BatchOutcome`: a row per run and the per-step
arrays of :class:`StepCensus`. It runs in the sweep's process, a pool process or on a Dask
worker (through :mod:`blackholes.pipelines.runner`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import time
from dataclasses import dataclass

import numpy as np

from blackholes.errors import BlackholesError
from blackholes.training.config import SHAPE_FIELDS, TrainConfig

RUNS_PER_BATCH = 16  # runs stacked in one model at most (see the README's batched timings)
STEP_ARRAYS = {  # name -> (numpy dtype, fill value for steps a shorter run does not have)
    "loss": (np.float32, np.nan), "distinct": (np.int32, -1), "holes": (np.int32, -1),
    "tokens_in_holes": (np.int32, -1), "largest": (np.int32, -1), "never_seen_one_point": (np.bool_, False),
    "hole_logit": (np.float32, np.nan), "hole_speed": (np.float32, np.nan),
}
RING = 64  # steps buffered per run before their census is taken
ERROR_CHARS = 300


@dataclass(frozen=True)
class BatchTask:
    """Runs trained together (one stacked model), picklable for a pool process or a Dask worker."""

    runs: tuple[int, ...]  # run ids
    configs: tuple[TrainConfig, ...]  # validated; equal on batched.SHAPE_FIELDS
    record: tuple[str | None, ...] = ()  # per run: the recording to write, or None
    check: bool = True  # train the first steps one run at a time too, and compare (agrees_with_single)

    @property
    def name(self) -> str:
        digest = hashlib.sha256(repr(self.runs).encode()).hexdigest()[:8]
        return f"runs-{self.runs[0]:06d}-{self.runs[-1]:06d}-{digest}"


def plan_batches(runs: list[int], configs: dict[int, TrainConfig], *, runs_per_batch: int = RUNS_PER_BATCH,
                 workers: int = 1, record: dict[int, str] | None = None) -> list[BatchTask]:
    """Group ``runs`` by shape (:data:`SHAPE_FIELDS`), cut each group into batches of at most
    ``runs_per_batch`` (evenly), and split the largest further while there are fewer batches
    than ``workers``. Runs keep their id order inside a batch.

    >>> cs = {i: TrainConfig(seed=i, precision=("bf16", "fp32")[i % 2]) for i in range(6)}
    >>> [t.runs for t in plan_batches(list(range(6)), cs, runs_per_batch=2)]
    [(0, 2), (4,), (1, 3), (5,)]
    """
    record = record or {}
    groups: dict[tuple, list[int]] = {}
    for r in runs:  # a compiled run alone: compiled numerics are not stacked (training/batched.py)
        alone = r if configs[r].numerics == "compiled" else None
        groups.setdefault((*(getattr(configs[r], n) for n in SHAPE_FIELDS), alone), []).append(r)
    chunks = []
    for members in groups.values():
        pieces = math.ceil(len(members) / max(1, runs_per_batch))
        chunks += [list(c) for c in np.array_split(np.array(members), pieces)]
    while chunks and len(chunks) < workers and max(len(c) for c in chunks) > 1:
        big = max(range(len(chunks)), key=lambda i: len(chunks[i]))
        c = chunks.pop(big)
        chunks[big:big] = [c[: len(c) // 2 + len(c) % 2], c[len(c) // 2 + len(c) % 2:]]
    return [BatchTask(tuple(int(r) for r in c), tuple(configs[r] for r in c), tuple(record.get(r) for r in c))
            for c in chunks]


def decide_compile(grid_configs: dict[int, TrainConfig], mode: str = "auto") -> dict[int, bool]:
    """Which runs compile: exactly those whose recipe says ``numerics="compiled"``. Compiling is
    never a speed choice, since it changes the rounding; ``mode="never"`` refuses a grid with
    compiled numerics instead of training it eagerly behind the user's back.

    >>> decide_compile({0: TrainConfig(steps=70_000), 1: TrainConfig(numerics="compiled")})
    {0: False, 1: True}
    """
    if mode not in ("auto", "never", True, False):
        raise BlackholesError(f"compile must be auto or never, got {mode!r}")
    compiled = {r: c.numerics == "compiled" for r, c in grid_configs.items()}
    if mode in ("never", False) and any(compiled.values()):
        raise BlackholesError("--no-compile (eager numerics) and --numerics compiled disagree; give one")
    return compiled


# ---------------------------------------------------------------------------- the census of every step


class StepCensus:
    """Per-step summaries of K runs trained together, computed as they train.

    Each step's embedding matrices go into a ring of :data:`RING` steps; a full ring is grouped
    exactly (``lifecycle.partitions``: hash, sort, verify byte for byte, skipping steps at
    which no row changed) and reduced to the arrays of :data:`STEP_ARRAYS`, plus each token's
    last motion and the first fission. ``never_seen[k]``: run k's byte ids absent from its corpus.
    """

    def __init__(self, initial, never_seen: list[list[int]], steps: int):
        import torch

        self.K, V, D = initial.shape
        self.dtype = "BF16" if initial.dtype == torch.bfloat16 else "F32"
        self.never_seen = [np.asarray(ns, dtype=np.intp) for ns in never_seen]
        self.steps = steps
        self.ring = torch.empty((self.K, RING + 1, V, D), dtype=initial.dtype)
        self.logits = torch.empty((self.K, RING, V), dtype=torch.float32)
        self.losses = torch.empty((self.K, RING), dtype=torch.float32)
        self.arrays = [{n: np.full(steps + 1, fill, dtype) for n, (dtype, fill) in STEP_ARRAYS.items()}
                       for _ in range(self.K)]
        self.last_motion = np.full((self.K, V), -1, np.int64)
        self.first_fission: list[int | None] = [None] * self.K
        self.final_ids = np.zeros((self.K, V), np.int32)
        self.ring[:, 0].copy_(initial)
        self.base, self.filled = 0, 1  # step of ring slot 0; slots in use

    def add(self, losses, last_logits, embeddings) -> None:
        """Training step ``base + filled`` is done: its loss and logits (before the update) and
        the matrices after it."""
        n = self.filled
        self.ring[:, n].copy_(embeddings.detach())
        self.logits[:, n - 1].copy_(last_logits.detach())
        self.losses[:, n - 1].copy_(losses.detach())
        self.filled += 1
        if self.filled == RING + 1:
            self.flush()

    def flush(self) -> None:
        """Group the buffered steps of every run and fill in their arrays; keep the last step."""
        import torch

        n = self.filled
        if n == 1 and self.base > 0:
            return
        view = torch.int16 if self.dtype == "BF16" else torch.int32
        raw = self.ring[:, :n].view(view).numpy().view(np.uint16 if self.dtype == "BF16" else np.uint32)
        for k in range(self.K):
            self._reduce(k, raw[k], self.losses[k, : n - 1].numpy(), self.logits[k, : n - 1].numpy())
        self.ring[:, 0].copy_(self.ring[:, n - 1])
        self.base += n - 1
        self.filled = 1

    def _reduce(self, k: int, bits: np.ndarray, losses: np.ndarray, logits: np.ndarray) -> None:
        from blackholes.analysis.lifecycle import census_series, partitions

        group_ids, changed = partitions(bits)
        steps = self.base + np.arange(len(bits))
        first = 0 if self.base == 0 else 1  # slot 0 repeats the previous block's last step
        a = self.arrays[k]
        series = census_series(group_ids)
        for name in ("distinct", "holes", "tokens_in_holes", "largest"):
            a[name][steps[first:]] = series[name][first:]
        a["loss"][steps[1:]] = losses
        ns = self.never_seen[k]
        one = (group_ids[:, ns] == group_ids[:, ns[:1]]).all(axis=1) if ns.size else np.zeros(len(bits), bool)
        a["never_seen_one_point"][steps[first:]] = one[first:]
        self._hole_motion(k, bits, steps)
        if ns.size:
            shared = (logits[:, ns].view(np.uint32) == logits[:, ns[:1]].view(np.uint32)).all(axis=1) & one[:-1]
            a["hole_logit"][steps[1:]] = np.where(shared, logits[:, ns[0]], np.nan)
        moved = changed[1:]  # [n - 1, V]: the row differs from the slot before
        if moved.any():
            last = len(moved) - 1 - np.argmax(moved[::-1], axis=0)
            self.last_motion[k] = np.where(moved.any(axis=0), steps[1:][last], self.last_motion[k])
        split = (np.take_along_axis(group_ids[1:], group_ids[:-1].astype(np.intp), axis=1) != group_ids[1:]).any(axis=1)
        if self.first_fission[k] is None and split.any():
            self.first_fission[k] = int(steps[1:][np.argmax(split)])
        self.final_ids[k] = group_ids[-1]

    def _hole_motion(self, k: int, bits: np.ndarray, steps: np.ndarray) -> None:
        """The never-seen set's centroid (as ``dynamics`` computes it) and how far it moves per step."""
        from blackholes.analysis.dynamics import group_mean

        ns = self.never_seen[k]
        if not ns.size:
            return
        centroid = group_mean(bits[:, ns], self.dtype)  # slot 0 included: the step before the block's first
        diff = np.diff(centroid, axis=0)
        self.arrays[k]["hole_speed"][steps[1:]] = np.sqrt(np.einsum("ij,ij->i", diff, diff))

    def result(self, k: int, steps_done: int) -> dict:
        """Run k's arrays and its row's summary fields (after :meth:`flush`)."""
        ids = self.final_ids[k]
        sizes = np.bincount(ids, minlength=len(ids))
        holes = sorted((int(s) for s in sizes if s >= 2), reverse=True)
        ns = self.never_seen[k]
        final = {"distinct": int((sizes > 0).sum()), "holes": len(holes), "tokens_in_holes": int(sum(holes)),
                 "largest": holes[0] if holes else 0,
                 "never_seen_one_point": bool(ns.size and (ids[ns] == ids[ns[0]]).all())}
        freeze = None
        if holes:
            largest = int(np.argmax(np.where(sizes >= 2, sizes, 0)))  # ties: the smallest id, as lifecycle
            last = int(self.last_motion[k][ids == largest].max())
            freeze = None if last == steps_done else (1 if last < 0 else last + 1)
        loss = self.arrays[k]["loss"][steps_done] if steps_done else np.nan
        return {"arrays": self.arrays[k], "final": final, "hole_sizes": holes, "freeze_step": freeze,
                "first_fission": self.first_fission[k], "final_loss": None if math.isnan(loss) else float(loss),
                "never_seen_tokens": int(ns.size)}


# ---------------------------------------------------------------------------- the unit of work


@dataclass
class BatchOutcome:
    """What one batch sends back: a row per run, per-step arrays [K, steps + 1] (None on error)."""

    rows: list[dict]
    arrays: dict[str, np.ndarray] | None = None
    seconds: float = 0.0


def train_batch(task: BatchTask, progress=None) -> BatchOutcome:
    """Train one batch and return its rows and per-step arrays; a failing batch is error rows.

    ``progress(n)`` hears how many run-steps were done since its last call (about 4 times a
    second). Runs in a pool process, a Dask worker, or in the sweep's own process.
    """
    t0 = time.perf_counter()
    try:
        rows, arrays = train_runs(task, progress)
    except Exception as e:  # a failing batch is rows with its error, never the end of the sweep
        return error_outcome(task, _one_line(e), time.perf_counter() - t0)
    seconds = time.perf_counter() - t0
    for row in rows:
        row["seconds"] = seconds / len(rows)
        row["batch"] = {"name": task.name, "runs": len(rows), "seconds": seconds}
    return BatchOutcome(rows, arrays, seconds)


def error_outcome(task: BatchTask, reason: str, seconds: float) -> BatchOutcome:
    rows = [{"run": r, "options": options_of(c), "error": reason, "seconds": seconds / len(task.runs),
             "batched": len(task.runs) > 1} for r, c in zip(task.runs, task.configs)]
    return BatchOutcome(rows, None, seconds)


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    if not isinstance(e, BlackholesError):
        text = f"{type(e).__name__}: {text}" if text else type(e).__name__
    return text[:ERROR_CHARS]


def options_of(config: TrainConfig) -> dict:
    """Every train option of a run, as its row records them (``blackholes train`` with these
    options trains the same run)."""
    d = dataclasses.asdict(config)
    d.pop("dtype")  # the older name of precision: the same value twice would read as a second option
    d.pop("compile")  # the older name of numerics, likewise
    if d["corpus"] is not None:
        d["corpus"] = str(d["corpus"])
    return d


def train_runs(task: BatchTask, progress) -> tuple[list[dict], dict]:
    """Prepare the corpora, train (stacked, or one by one when the check fails), collect."""
    from blackholes.training import corpus as corpora
    from blackholes.training.loop import intra_op_threads, prepare_corpus, window_starts

    cache = {}
    prepared = []
    for c in task.configs:
        key = str(c.corpus)
        if key not in cache:
            cache[key] = prepare_corpus(c)
        corpus = cache[key]
        prepared.append((corpus, window_starts(c, corpus.size), corpora.never_seen(corpus.data, c.vocab)))
    with intra_op_threads(task.configs[0].threads):
        units, note = _units(task, prepared)
        results = []
        for unit in units:
            results += _train_unit(unit, task, prepared, progress)
    rows, per_run = [], []
    for i, (r, c) in enumerate(zip(task.runs, task.configs)):
        res, unit = results[i]
        per_run.append(res.pop("arrays"))
        rows.append({"run": r, "options": options_of(c), **res, "batched": unit.batched, "compiled": unit.compiled,
                     "recording": task.record[i] if task.record else None, "note": note, "error": None})
    arrays = {name: np.stack([a[name] for a in per_run]) for name in STEP_ARRAYS}
    return rows, arrays


def _units(task: BatchTask, prepared) -> tuple[list, str | None]:
    """How the batch trains: all runs stacked, or each alone (one run; a compiled run; or a
    stacked step that does not reproduce the single-run step here)."""
    from blackholes.training.batched import agrees_with_single

    configs = list(task.configs)
    if len(configs) == 1:
        return [Single(0, configs[0], prepared[0])], None
    tokens = [p[0].tokens for p in prepared]
    starts = [p[1] for p in prepared]
    if task.check and not agrees_with_single(configs, tokens, starts):
        note = ("the stacked step does not reproduce the single-run step bit for bit for this shape on this machine; "
                "trained one run at a time")
        return [Single(i, c, prepared[i]) for i, c in enumerate(configs)], note
    return [Stacked(list(range(len(configs))), configs, tokens, starts)], None


class Stacked:
    """All runs of the batch in one stacked model."""

    batched, compiled = True, False

    def __init__(self, indices, configs, tokens, starts):
        from blackholes.training.batched import StackedBatches, build_stacked, trainer_for

        model, self.centres = build_stacked(configs)
        self.indices, self.configs = indices, configs
        self.trainer = trainer_for(model, configs)
        self.batches = StackedBatches(tokens, starts, configs[0].context)

    def embeddings(self):
        return self.trainer.model.embedding.detach()

    def step(self, step: int, observe):
        from blackholes.training.batched import stacked_train_step

        inputs, targets = self.batches.get(step)
        return stacked_train_step(self.trainer, inputs, targets, step, observe)

    def recorder_trainer(self, j: int):
        """What ``loop.StepRecorder`` reads of run j: its embedding view (with its gradient), its
        parameters, its clipping and the optimizer holding its Adam state."""
        from types import SimpleNamespace

        views = self.trainer.views[j]
        wte = views[self.trainer.model.names.index("wte.weight")]
        return SimpleNamespace(model=SimpleNamespace(embedding=wte), params=views,
                               clip=self.configs[j].clip, optimizer=self.trainer.optimizer)


class Single:
    """One run, by ``loop``'s own parts (``train``'s path exactly; compiled when its config says so)."""

    batched = False

    def __init__(self, index, config, prepared):
        from blackholes.training import loop

        corpus, starts, _ = prepared
        self.indices, self.configs, self.config = [index], [config], config
        model, centre = loop.build_model(config)
        self.centres = [centre]
        import torch

        threads = torch.get_num_threads()  # in effect (the batch runs inside loop.intra_op_threads)
        forward = loop.select_forward(model, config, threads, False)  # None: eager numerics
        self.compiled = forward is not None
        self.trainer = loop.Trainer(model, loop.build_optimizer(model, config),
                                    forward or loop.eager_forward(config), config.clip)
        self.batches = loop.Batches(corpus, starts, config.context)

    def embeddings(self):
        return self.trainer.model.embedding.detach()[None]

    def step(self, step: int, observe):
        from types import SimpleNamespace

        from blackholes.training import loop

        inputs, targets = self.batches.get(step)
        look = (lambda loss, logits: observe(loss.detach()[None], logits.detach()[None])) if observe else None
        out = loop.train_step(self.trainer, inputs, targets, loop.learning_rate(self.config, step), look)
        return SimpleNamespace(losses=out.loss.detach()[None], last_logits=out.last_logits.detach()[None],
                               grad_norms=[out.grad_norm])

    def recorder_trainer(self, j: int):
        return self.trainer


def _train_unit(unit, task: BatchTask, prepared, progress) -> list[tuple[dict, object]]:
    """Train one unit to the end, taking the census of every step and writing its recordings."""
    import contextlib

    steps = unit.configs[0].steps
    census = StepCensus(unit.embeddings(), [prepared[i][2] for i in unit.indices], steps)
    ticker = _Ticker(progress, len(unit.indices))
    with contextlib.ExitStack() as stack:
        recorders = _open_recorders(stack, unit, task, prepared)
        for step in range(1, steps + 1):
            wanting = [(j, rec) for j, rec in recorders if rec.wants(step)]
            observe = (lambda losses, logits: [rec.before_update(losses[j], logits[j]) for j, rec in wanting]) \
                if wanting else None
            out = unit.step(step, observe)
            for j, rec in wanting:
                rec.after_update(_GradNorm(out.grad_norms[j]))
            census.add(out.losses, out.last_logits, unit.embeddings())
            ticker.tick()
        census.flush()
        for j, rec in recorders:
            rec.flush()
            rec.complete()
    ticker.done()
    return [(census.result(j, steps), unit) for j in range(len(unit.indices))]


@dataclass
class _GradNorm:
    grad_norm: object


class _Ticker:
    """Calls ``progress(run_steps)`` about four times a second."""

    def __init__(self, progress, runs: int):
        self.progress, self.runs = progress, runs
        self.pending, self.last = 0, time.perf_counter()

    def tick(self) -> None:
        self.pending += self.runs
        if self.progress is not None and time.perf_counter() - self.last > 0.25:
            self.done()

    def done(self) -> None:
        if self.progress is not None and self.pending:
            self.progress(self.pending)
        self.pending, self.last = 0, time.perf_counter()


class _Recorder:
    """``loop.StepRecorder`` for one run of a unit, with its writer and metadata."""

    def __init__(self, writer, recorder, meta):
        self.writer, self.recorder, self.meta = writer, recorder, meta
        self.wants, self.before_update, self.after_update = recorder.wants, recorder.before_update, recorder.after_update

    def flush(self) -> None:
        self.recorder.flush()

    def complete(self) -> None:
        self.writer.rewrite_metadata(self.meta.encode(complete=True))


def _open_recorders(stack, unit, task: BatchTask, prepared) -> list[tuple[int, _Recorder]]:
    """A recording per run of the unit that asks for one, streamed as ``train`` streams it."""
    import torch

    from blackholes.io.atomic import atomic_path
    from blackholes.training.loop import StepRecorder, RunMetadata
    from blackholes.training.recording import RecordingWriter, recording_specs

    out = []
    for j, i in enumerate(unit.indices):
        path = task.record[i] if task.record else None
        if path is None:
            continue
        config = task.configs[i]
        corpus, starts, _ = prepared[i]
        steps = config.recorded_steps()
        meta = RunMetadata(config, corpus, unit.centres[j], starts, steps,
                         {"threads": torch.get_num_threads(), "compiled": unit.compiled})
        tmp = stack.enter_context(atomic_path(path))
        writer = RecordingWriter(tmp, recording_specs(config), len(steps), meta.encode(complete=False))
        stack.callback(writer.close)
        recorder = StepRecorder(writer, steps, unit.recorder_trainer(j), config)
        recorder.initial()
        out.append((j, _Recorder(writer, recorder, meta)))
    return out
