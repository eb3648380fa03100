"""``sweep``: many training runs from one grid of options, batched, with a census of every step.

A grid names, for any ``train`` option, a list of values (``--sigma 0,1e-4,1e-3``, ``--seeds
0-7``, ``--sigma log:1e-6:1e-1:25``, ``--precision bf16,bf16-mixed``); the sweep trains the
Cartesian product (run ids in grid order, the last swept option varying fastest), each run the
same run as ``blackholes train`` with the options its row records. Runs of one shape and
precision are trained together as one stacked model (:mod:`blackholes.training.batched`),
at most :data:`RUNS_PER_BATCH` at a time; a batch is one task, run in this process, on a local
process pool (one thread per batch) or on a Dask cluster. During training every run's
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
Ctrl-C keeps every finished batch (a batch in flight is lost and trained again next time).

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
import hashlib
import json
import math
import os
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from blackholes.errors import BlackholesError
from blackholes.training.config import INITS, NUMERICS, SCHEDULES, TrainConfig
from blackholes.training.precision import PRECISIONS

FORMAT = "blackholes.sweep/1"
RUNS_PER_BATCH = 16  # runs stacked in one model at most (see the README's batched timings)
CONFIRM_RUNS = 10_000  # a larger grid needs --yes (or a yes on the terminal)
STEP_ARRAYS = {  # name -> (numpy dtype, fill value for steps a shorter run does not have)
    "loss": (np.float32, np.nan), "distinct": (np.int32, -1), "holes": (np.int32, -1),
    "tokens_in_holes": (np.int32, -1), "largest": (np.int32, -1), "never_seen_one_point": (np.bool_, False),
    "hole_logit": (np.float32, np.nan), "hole_speed": (np.float32, np.nan),
}
RING = 64  # steps buffered per run before their census is taken
from blackholes.training.config import SHAPE_FIELDS  # noqa: E402 (one home, torch-free)
ERROR_CHARS = 300

# train options a grid may sweep, and those given once (recording and execution settings)
_FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}
FIXED_ONLY = ("every", "optimizer_state", "compile", "threads")
SWEEPABLE = tuple(n for n, f in _FIELDS.items() if "cli" in f.metadata and n not in FIXED_ONLY)
CHOICES = {"precision": tuple(PRECISIONS), "init": INITS, "schedule": SCHEDULES, "numerics": NUMERICS}
ALIASES = {"seeds": "seed", "dtype": "precision", "sigmas": "sigma"}


# ---------------------------------------------------------------------------- the grid


def parse_values(name: str, spec) -> list:
    """The values one option takes in a grid: a value, a list of values, or a text of items
    separated by commas. An item is a value, or a range:

    * integers: ``A-B`` (every integer from A to B), e.g. ``--seeds 0-7``;
    * numbers: ``log:START:STOP:N`` (N values, geometric) or ``lin:START:STOP:N`` (evenly
      spaced), both ends included; ``START:STOP:N`` and ``START:STOP:N:log`` are the same ranges
      written as ``--no-train`` writes them. Values are kept to 6 significant digits, so each
      can be typed back into ``blackholes train``; integer fields round them.

    Order is kept; a value given twice counts once.

    >>> parse_values("sigma", "0,log:1e-4:1e-2:3")
    [0.0, 0.0001, 0.001, 0.01]
    >>> parse_values("seed", "0-3,7"), parse_values("precision", "bf16,bf16-mixed"), parse_values("lr", 0.01)
    ([0, 1, 2, 3, 7], ['bf16', 'bf16-mixed'], [0.01])
    """
    name = ALIASES.get(name, name)
    flag = "--" + name.replace("_", "-")
    items = list(spec) if isinstance(spec, (list, tuple)) else [spec]
    values = []
    for item in items:
        parts = [p.strip() for p in item.split(",")] if isinstance(item, str) else [item]
        for part in parts:
            if part != "":
                values.extend(_item_values(name, flag, part))
    if not values:
        raise BlackholesError(f"{flag}: the grid is empty (no values in {spec!r})")
    unique = []
    for v in values:
        if v not in unique:
            unique.append(v)
    return unique


def _item_values(name: str, flag: str, part) -> list:
    kind = _kind(name)
    if kind == "choice":
        if part not in CHOICES[name]:
            raise BlackholesError(f"{flag}: {part!r} is not one of {', '.join(CHOICES[name])}")
        return [part]
    if kind == "path":
        return [str(part)]
    if not isinstance(part, str):
        return [_number(kind, flag, part)]
    fields = part.split(":")
    if len(fields) > 1:
        return [_number(kind, flag, v) for v in _range(flag, fields, part)]
    if kind == "int" and re.fullmatch(r"\d+-\d+", part):
        a, b = (int(x) for x in part.split("-"))
        if a > b:
            raise BlackholesError(f"{flag}: the range {part} runs backwards (write {b}-{a})")
        if b - a >= 10_000_000:
            raise BlackholesError(f"{flag}: the range {part} has {b - a + 1:,} values; that is not a grid")
        return list(range(a, b + 1))
    try:
        return [_number(kind, flag, int(part) if kind == "int" else float(part))]
    except ValueError:
        hint = "integers and ranges such as 0-7" if kind == "int" else "numbers and ranges such as log:1e-6:1e-1:25"
        raise BlackholesError(f"{flag}: cannot read {part!r}; give {hint}") from None


def _kind(name: str) -> str:
    if name in CHOICES:
        return "choice"
    if name == "corpus":
        return "path"
    default = _FIELDS[name].default
    return "int" if isinstance(default, int) and not isinstance(default, bool) else "float"


def _range(flag: str, fields: list[str], part: str) -> list[float]:
    """``log:A:B:N`` / ``lin:A:B:N`` / ``A:B:N`` / ``A:B:N:log`` as floats."""
    how = "lin"
    if fields[0] in ("log", "lin"):
        how, fields = fields[0], fields[1:]
    elif len(fields) == 4 and fields[3] in ("log", "lin"):
        how, fields = fields[3], fields[:3]
    try:
        if len(fields) != 3:
            raise ValueError
        start, stop, count = float(fields[0]), float(fields[1]), int(fields[2])
    except ValueError:
        raise BlackholesError(f"{flag}: cannot read the range {part!r}; write log:START:STOP:N or "
                              "lin:START:STOP:N") from None
    if count < 1 or count > 10_000_000:
        raise BlackholesError(f"{flag}: the range {part!r} must have between 1 and 10,000,000 values")
    if how == "log":
        if not (start > 0 and stop > 0):
            raise BlackholesError(f"{flag}: a log range needs START > 0 and STOP > 0, got {part!r}")
        values = np.geomspace(start, stop, count)
    else:
        values = np.linspace(start, stop, count)
    return [float(f"{v:.6g}") for v in values]


def _number(kind: str, flag: str, value):
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise BlackholesError(f"{flag}: {value!r} is not a number")
    if kind == "int":
        if isinstance(value, (float, np.floating)) and not (math.isfinite(value) and value == round(value)):
            value = round(value) if math.isfinite(value) else value
        if not isinstance(value, (int, np.integer)) and not (isinstance(value, float) and math.isfinite(value)):
            raise BlackholesError(f"{flag}: {value!r} is not an integer")
        return int(value)
    value = float(value)
    if not math.isfinite(value):
        raise BlackholesError(f"{flag}: {value!r} is not a finite number")
    return value


@dataclass
class Grid:
    """Which options vary (``swept``: name -> values, in ``TrainConfig`` order) and the rest (``fixed``).

    Runs are the Cartesian product, the last swept option varying fastest; run ids count from 0.

    >>> g = Grid.from_options({"sigma": "0,1e-3", "seed": "0-2", "steps": 100})
    >>> g.size, g.swept_values(4), g.config(4).steps
    (6, {'sigma': 0.001, 'seed': 1}, 100)
    """

    swept: dict[str, list]
    fixed: dict[str, object]

    @classmethod
    def from_options(cls, options: dict) -> Grid:
        """A grid from option values as :func:`parse_values` reads them (None: the default)."""
        given: dict[str, list] = {}
        for raw, spec in options.items():
            if spec is None:
                continue
            name = ALIASES.get(raw, raw)
            if name not in _FIELDS or name == "dtype":
                raise BlackholesError(f"--{raw.replace('_', '-')} is not a train option")
            if name in given:
                raise BlackholesError(f"--{name.replace('_', '-')} is given twice (also as --{raw.replace('_', '-')})")
            given[name] = _fixed_value(name, spec) if name in FIXED_ONLY else parse_values(name, spec)
        swept = {n: given[n] for n in _FIELDS if n in given and n not in FIXED_ONLY and len(given[n]) > 1}
        fixed = {}
        for n, f in _FIELDS.items():
            if n == "dtype" or n in swept:
                continue
            value = given.get(n, [f.default] if n not in FIXED_ONLY else f.default)
            fixed[n] = value[0] if n not in FIXED_ONLY else value
        return cls(swept, fixed)

    @property
    def size(self) -> int:
        return math.prod(len(v) for v in self.swept.values())

    def swept_values(self, run: int) -> dict:
        """The swept options of run ``run`` (the last option varies fastest)."""
        out = {}
        for name in reversed(list(self.swept)):
            values = self.swept[name]
            run, i = divmod(run, len(values))
            out[name] = values[i]
        return dict(reversed(list(out.items())))

    def config(self, run: int) -> TrainConfig:
        """The ``TrainConfig`` of run ``run`` (not yet validated)."""
        return TrainConfig(**{**self.fixed, **self.swept_values(run)})

    def to_json(self) -> dict:
        return {"swept": self.swept, "fixed": self.fixed, "runs": self.size}


def _fixed_value(name: str, spec):
    """A recording or execution setting: one value, never a list."""
    flag = "--" + name.replace("_", "-")
    if isinstance(spec, bool):
        return spec
    text = ",".join(str(s) for s in spec) if isinstance(spec, (list, tuple)) else str(spec)
    if any(sep in text for sep in (",", ":")) or re.fullmatch(r"\d+-\d+", text):
        raise BlackholesError(f"{flag} cannot be swept (it is a recording or execution setting, the same for "
                              f"every run): give one value, not {text!r}")
    if isinstance(_FIELDS[name].default, bool):
        raise BlackholesError(f"{flag} is a switch: give it without a value")
    try:
        return int(text)
    except ValueError:
        raise BlackholesError(f"{flag}: cannot read {text!r}; give one integer") from None


def parse_run_ids(spec, runs: int) -> set[int]:
    """``--record``: ``none``, ``all``, or run ids and ranges (``0,3,8-11``) inside the grid.

    >>> sorted(parse_run_ids("0,2-3", 5)), parse_run_ids("none", 5), len(parse_run_ids("all", 5))
    ([0, 2, 3], set(), 5)
    >>> parse_run_ids("7", 5)
    Traceback (most recent call last):
    ...
    blackholes.errors.BlackholesError: --record: run 7 is not in the grid (runs 0-4)
    """
    if spec is None:
        return set()
    if not isinstance(spec, str):
        ids = {int(s) for s in spec}
    elif spec.strip() in ("", "none"):
        return set()
    elif spec.strip() == "all":
        return set(range(runs))
    else:
        ids = set()
        for part in (p.strip() for p in spec.split(",")):
            m = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
            if not m:
                raise BlackholesError(f"--record: cannot read {part!r}; give none, all, or run ids such as 0,3,8-11")
            a, b = int(m[1]), int(m[2] or m[1])
            if a > b:
                raise BlackholesError(f"--record: the range {part} runs backwards")
            bad = a if a >= runs else b if b >= runs else None
            if bad is not None:
                raise BlackholesError(f"--record: run {bad} is not in the grid (runs 0-{runs - 1})")
            ids.update(range(a, b + 1))
    bad = sorted(i for i in ids if not 0 <= i < runs)
    if bad:
        raise BlackholesError(f"--record: run {bad[0]} is not in the grid (runs 0-{runs - 1})")
    return ids


# ---------------------------------------------------------------------------- planning


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
        rows, arrays = _train(task, progress)
    except Exception as e:  # a failing batch is rows with its error, never the end of the sweep
        return _error_outcome(task, _one_line(e), time.perf_counter() - t0)
    seconds = time.perf_counter() - t0
    for row in rows:
        row["seconds"] = seconds / len(rows)
        row["batch"] = {"name": task.name, "runs": len(rows), "seconds": seconds}
    return BatchOutcome(rows, arrays, seconds)


def _error_outcome(task: BatchTask, reason: str, seconds: float) -> BatchOutcome:
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


def _train(task: BatchTask, progress) -> tuple[list[dict], dict]:
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
        return [_Single(0, configs[0], prepared[0])], None
    tokens = [p[0].tokens for p in prepared]
    starts = [p[1] for p in prepared]
    if task.check and not agrees_with_single(configs, tokens, starts):
        note = ("the stacked step does not reproduce the single-run step bit for bit for this shape on this machine; "
                "trained one run at a time")
        return [_Single(i, c, prepared[i]) for i, c in enumerate(configs)], note
    return [_Stacked(list(range(len(configs))), configs, tokens, starts)], None


class _Stacked:
    """All runs of the batch in one stacked model."""

    batched, compiled = True, False

    def __init__(self, indices, configs, tokens, starts):
        from blackholes.training.batched import StackedBatches, _trainer, build_stacked

        model, self.centres = build_stacked(configs)
        self.indices, self.configs = indices, configs
        self.trainer = _trainer(model, configs)
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


class _Single:
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


# ---------------------------------------------------------------------------- the output folder


class SweepStore:
    """The sweep folder: ``sweep.json``, ``runs.jsonl``, ``parts/``, ``steps.safetensors``, ``recordings/``."""

    def __init__(self, out):
        self.out = Path(out)
        self.runs_file = self.out / "runs.jsonl"
        self.parts = self.out / "parts"
        self.recordings = self.out / "recordings"

    def open(self, grid: Grid, *, recordings: bool) -> None:
        """Create the folder (or check it holds this grid) and write ``sweep.json``."""
        from blackholes.io.atomic import write_json

        if self.out.exists() and not self.out.is_dir():
            raise BlackholesError(f"--out {self.out} exists and is not a folder")
        if not self.out.exists() and not self.out.parent.is_dir():
            raise BlackholesError(f"--out {self.out}: its folder {self.out.parent} does not exist")
        grid_file = self.out / "sweep.json"
        doc = {"format": FORMAT, **_jsonable(grid.to_json())}
        if grid_file.is_file():
            old = _read_json(grid_file)
            if {k: old.get(k) for k in ("swept", "fixed")} != {k: doc[k] for k in ("swept", "fixed")}:
                raise BlackholesError(f"{self.out} holds a different sweep ({_describe(old)}); use another --out, "
                                      "or the same options to resume it")
        elif self.runs_file.exists():
            raise BlackholesError(f"{self.out} has runs.jsonl but no sweep.json; use another --out")
        try:
            self.out.mkdir(exist_ok=True)
            self.parts.mkdir(exist_ok=True)
            if recordings:
                self.recordings.mkdir(exist_ok=True)
        except OSError as e:
            raise BlackholesError(f"cannot create {self.out}: {e.strerror or e}") from None
        if not os.access(self.out, os.W_OK):
            raise BlackholesError(f"cannot write to {self.out} (permission denied)")
        if not grid_file.is_file():
            write_json(grid_file, doc)

    def recording_path(self, run: int) -> str:
        return str(self.recordings / f"run-{run:06d}.safetensors")

    def rows(self) -> dict[int, dict]:
        """The newest row of each run in ``runs.jsonl`` (a torn last line is skipped)."""
        out: dict[int, dict] = {}
        if not self.runs_file.is_file():
            return out
        for line in self.runs_file.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(row, dict) and isinstance(row.get("run"), int):
                out[row["run"]] = row
        return out

    def save(self, task: BatchTask, outcome: BatchOutcome) -> None:
        """The batch's part file first, then its rows: a row in runs.jsonl always has its data."""
        from blackholes.io.safetensors import save_safetensors

        if outcome.arrays is not None:
            part = self.parts / f"{task.name}.safetensors"
            steps = outcome.arrays["loss"].shape[1]
            save_safetensors(part, outcome.arrays, {"runs": json.dumps(list(task.runs)),
                                                    "steps": json.dumps(list(range(steps)))})
            for row in outcome.rows:
                row["part"] = part.name
        with open(self.runs_file, "a+b") as f:
            if not _ends_a_line(f):
                f.write(b"\n")  # a line torn by a kill stays alone on its line, unread
            for row in outcome.rows:
                f.write((json.dumps(_jsonable(row), separators=(",", ":"), allow_nan=False) + "\n").encode())
            f.flush()
            os.fsync(f.fileno())

    def finished(self, row: dict | None, wants_recording: bool) -> bool:
        """Whether ``row`` is a finished run: no error, its part file there (and its recording, if asked)."""
        if row is None or row.get("error") is not None or not row.get("part"):
            return False
        if not (self.parts / row["part"]).is_file():
            return False
        return not wants_recording or bool(row.get("recording") and Path(row["recording"]).is_file())

    def write_steps(self, rows: dict[int, dict]) -> Path | None:
        """``steps.safetensors`` from the finished rows' parts, in run order (padded to the longest run)."""
        from blackholes.io.safetensors import open_tensor, read_header, save_safetensors

        done = sorted(r for r, row in rows.items() if row.get("error") is None and row.get("part"))
        if not done:
            return None
        length = max(int(rows[r]["options"]["steps"]) for r in done) + 1
        out = {name: np.full((len(done), length), fill, dtype) for name, (dtype, fill) in STEP_ARRAYS.items()}
        by_part: dict[str, list[int]] = {}
        for i, r in enumerate(done):
            by_part.setdefault(rows[r]["part"], []).append(i)
        for part, slots in by_part.items():
            path = self.parts / part
            header = read_header(path)
            ids = json.loads(header.metadata["runs"])
            for name in STEP_ARRAYS:
                data = open_tensor(path, name, header)
                for i in slots:
                    row = data[ids.index(done[i])]
                    out[name][i, : len(row)] = row
        target = self.out / "steps.safetensors"
        save_safetensors(target, out, {"runs": json.dumps(done), "steps": json.dumps(list(range(length))),
                                       "format": json.dumps(FORMAT)})
        return target


def _ends_a_line(f) -> bool:
    """Whether the file open in ``f`` is empty or ends with a newline."""
    end = f.seek(0, os.SEEK_END)
    if end == 0:
        return True
    f.seek(end - 1)
    return f.read(1) == b"\n"


def _jsonable(value):
    """Plain JSON values (NaN and infinities as null)."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, Path):
        return str(value)
    return value


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BlackholesError(f"cannot read {path}: {e}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise BlackholesError(f"{path} is not a sweep's grid (format {FORMAT})")
    return data


def _describe(doc: dict) -> str:
    swept = doc.get("swept") or {}
    parts = [f"{k} {','.join(map(str, v[:4]))}{',...' if len(v) > 4 else ''}" for k, v in swept.items()]
    return f"{doc.get('runs', '?')} runs: " + ("; ".join(parts) if parts else "one run")


# ---------------------------------------------------------------------------- where batches run


def _pool_context():
    """fork while torch is not loaded here (workers start at once); else forkserver, as torch's
    OpenMP threads do not survive a fork."""
    import multiprocessing as mp
    import threading

    if sys.platform == "linux" and "torch" not in sys.modules and threading.active_count() == 1:
        return mp.get_context("fork")
    return mp.get_context("forkserver" if sys.platform != "win32" else "spawn")


_QUEUE = None  # a pool process's progress queue (set by _pool_init)


def _pool_init(queue, environ: dict, cwd: str) -> None:
    global _QUEUE
    from blackholes.pipelines.census import _worker_init

    _worker_init(environ, cwd)
    _QUEUE = queue


def _pool_batch(task: BatchTask) -> BatchOutcome:
    return train_batch(task, progress=_QUEUE.put if _QUEUE is not None else None)


def run_local(tasks: list[BatchTask], handle, workers: int, bar=None) -> None:
    """Run ``tasks`` here (one worker) or on a pool of ``workers`` processes; ``handle(task, outcome)``
    is called in this process as each batch finishes. A pool process that dies fails its batch."""
    if workers <= 1 or len(tasks) <= 1:
        for task in tasks:
            handle(task, train_batch(task, progress=bar))
        return
    from collections import deque
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
    from concurrent.futures.process import BrokenProcessPool

    from blackholes.pipelines.census import _stop_pool

    ctx = _pool_context()
    queue = ctx.SimpleQueue()
    todo, running, pool = deque(tasks), {}, None
    try:
        while todo or running:
            if pool is None:
                pool = ProcessPoolExecutor(workers, mp_context=ctx, initializer=_pool_init,
                                           initargs=(queue, dict(os.environ), os.getcwd()))
            while todo and len(running) < workers:
                task = todo.popleft()
                running[pool.submit(_pool_batch, task)] = task
            done, _ = wait(list(running), timeout=0.25, return_when=FIRST_COMPLETED)
            while not queue.empty():
                n = queue.get()
                if bar is not None:
                    bar(n)
            broken = False
            for fut in [f for f in running if f in done]:  # in submission order: a set has none
                task = running.pop(fut)
                try:
                    outcome = fut.result()
                except BrokenProcessPool:
                    broken = True
                    outcome = _error_outcome(task, "the worker process died (out of memory, or killed)", 0.0)
                handle(task, outcome)
            if broken:
                pool.shutdown(wait=True)
                pool = None
    except BaseException:
        if pool is not None:
            _stop_pool(pool)
        raise
    if pool is not None:
        pool.shutdown(wait=True)


def run_dask(tasks: list[BatchTask], handle, client) -> None:
    """The same batches on a Dask cluster (CPU or CUDA workers); every worker needs blackholes,
    the corpora, and — for recorded runs — the sweep folder at the same path."""
    from distributed import as_completed

    from blackholes.pipelines.census import dask_failure

    run_id = hashlib.sha256(f"{time.time_ns()}:{os.getpid()}".encode()).hexdigest()[:8]
    futures = {client.submit(train_batch, t, key=f"sweep-{run_id}-{t.name}", pure=False): t for t in tasks}
    try:
        for fut in as_completed(list(futures)):
            task = futures.pop(fut)
            try:
                outcome = fut.result()
            except Exception as e:  # KilledWorker, a lost future, ...
                outcome = _error_outcome(task, dask_failure(e), 0.0)
            handle(task, outcome)
            fut.release()
    finally:
        if futures:  # interrupted: nothing left running on the cluster for us
            client.cancel(list(futures))


# ---------------------------------------------------------------------------- the API


@dataclass
class SweepResult:
    """The runs table (one row per run of the grid that has finished, in run order) and the
    per-step arrays of those runs (``steps[name]``: ``[len(run_ids), len(step_numbers)]``)."""

    runs: list[dict]
    steps: dict[str, np.ndarray]
    run_ids: list[int]
    step_numbers: list[int]
    grid: Grid
    out: Path
    trained: int = 0
    skipped: int = 0
    failed: int = 0
    interrupted: bool = False
    seconds: float = 0.0
    files: dict[str, Path] = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"out": str(self.out), "grid": self.grid.to_json(), "trained": self.trained,
                "skipped": self.skipped, "failed": self.failed, "interrupted": self.interrupted,
                "seconds": self.seconds, "runs": self.runs}

    def to_pandas(self):
        """The runs table as a ``pandas.DataFrame`` (options and final counts flattened)."""
        try:
            import pandas as pd
        except ImportError:
            raise BlackholesError("to_pandas() needs pandas (pip install pandas); the rows are in .runs") from None
        return pd.json_normalize(self.runs)

    def summary(self) -> str:
        """A few lines per combination of the swept options other than the seed."""
        return summary_text(self.runs, list(self.grid.swept))


def summary_text(rows: list[dict], swept: list[str]) -> str:
    """The finished runs, seeds pooled: never-seen hole intact, tokens in holes, freeze step, loss.

    >>> row = {"options": {"sigma": 0.0, "seed": 0}, "final": {"never_seen_one_point": True, "tokens_in_holes": 72,
    ...        "holes": 1}, "freeze_step": 1043, "final_loss": 2.5, "error": None}
    >>> print(summary_text([row], ["sigma", "seed"]))
    sigma=0: 1 run; never-seen hole one point 1/1; tokens in holes 72; holes 1; freezes from 1043; loss 2.500
    """
    keys = [k for k in swept if k != "seed"]
    cells: dict[tuple, list[dict]] = {}
    for r in rows:
        if r.get("error") is None:
            cells.setdefault(tuple(r["options"][k] for k in keys), []).append(r)
    lines = []
    for key, rs in cells.items():
        label = ", ".join(f"{k}={_short(v)}" for k, v in zip(keys, key)) or "all runs"
        intact = sum(bool(r["final"]["never_seen_one_point"]) for r in rs)
        freeze = [r["freeze_step"] for r in rs if r.get("freeze_step") is not None]
        loss = [r["final_loss"] for r in rs if r.get("final_loss") is not None]
        lines.append(f"{label}: {len(rs)} run{'s' * (len(rs) != 1)}; never-seen hole one point {intact}/{len(rs)}; "
                     f"tokens in holes {_spread([r['final']['tokens_in_holes'] for r in rs])}; "
                     f"holes {_spread([r['final']['holes'] for r in rs])}; "
                     f"freezes from {_spread(freeze) if freeze else 'never'}"
                     + (f" ({len(rs) - len(freeze)} never)" if freeze and len(freeze) < len(rs) else "")
                     + (f"; loss {np.mean(loss):.3f}" if loss else ""))
    return "\n".join(lines)


def _short(v) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def _spread(values: list) -> str:
    lo, hi = min(values), max(values)
    return f"{lo}" if lo == hi else f"{np.median(values):g} [{lo}-{hi}]"


def sweep(
    out: str | os.PathLike,
    *,
    record="none",
    workers: int | None = None,
    scheduler=None,
    runs_per_batch: int = RUNS_PER_BATCH,
    compile: str = "auto",
    yes: bool = False,
    confirm=None,
    progress: bool = False,
    log=None,
    check: bool = True,
    on_batch=None,
    **options,
) -> SweepResult:
    """Train every run of the grid ``options`` (train options: a value, a list, or a text such as
    ``"0,1e-4"``, ``"0-7"``, ``"log:1e-6:1e-1:25"``), batched, into the folder ``out``.

    ``record``: ``"none"``, ``"all"`` or run ids (``"0,3,8-11"``) whose full recording to write.
    ``workers``: local processes (default: the cores, at most one per batch; 1 trains here);
    ``scheduler``: a Dask scheduler address or ``distributed.Client`` (then workers run the
    batches). ``compile``: ``"auto"`` (each run compiles as its ``numerics`` says) or ``"never"``
(refuses compiled numerics; see :func:`decide_compile`). A grid of more
    than :data:`CONFIRM_RUNS` runs needs ``yes=True`` (or ``confirm(runs)`` returning True).
    ``on_batch(task, outcome)`` is called after each batch is saved. Ctrl-C keeps the finished
    batches (``interrupted=True``); calling again with the same grid resumes.

    >>> r = sweep("s", sigma="0,1e-4,1e-3,1e-2", seed="0-7", precision="bf16,bf16-mixed")   # doctest: +SKIP
    >>> r.steps["holes"].shape, r.runs[0]["freeze_step"]                                 # doctest: +SKIP
    """
    t0 = time.perf_counter()
    grid = Grid.from_options(options)
    if grid.size > CONFIRM_RUNS and not yes and not (confirm is not None and confirm(grid.size)):
        raise BlackholesError(f"the grid has {grid.size:,} runs (more than {CONFIRM_RUNS:,}); pass --yes "
                              "(yes=True) to train them all")
    recorded = parse_run_ids(record, grid.size)
    _check_sizes(grid)
    if runs_per_batch < 1:
        raise BlackholesError(f"--runs-per-batch must be at least 1, got {runs_per_batch}")
    configs = _configs(grid)
    decide_compile(configs, compile)  # refuses --no-compile with compiled numerics, before any training
    store = SweepStore(out)
    _check_recordings(configs, recorded, store.out)
    client, owned = _client(scheduler, workers)
    try:
        store.open(grid, recordings=bool(recorded))
        return _run(grid, configs, recorded, store, client, workers, runs_per_batch, check,
                    progress, log, on_batch, t0)
    finally:
        if owned:
            client.close()


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
    return ", ".join(f"{k}={_short(v)}" for k, v in values.items()) or "the only run"


def _check_recordings(configs: dict[int, TrainConfig], recorded: set[int], out: Path) -> None:
    """Refuse recordings the disk cannot hold, or whose header safetensors cannot hold (one line)."""
    import shutil

    from blackholes.io.safetensors import MAX_HEADER
    from blackholes.training.limits import _human, run_size

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
        raise BlackholesError(f"--record: {len(recorded):,} recordings would take {_human(need)} but only "
                              f"{_human(free)} is free in {folder}; record fewer runs or steps (--every K)")


def _client(scheduler, workers):
    if scheduler is None or (isinstance(scheduler, str) and scheduler == "local"):
        return None, False
    if workers is not None:
        raise BlackholesError("--workers sizes the local pool; on a Dask cluster its workers run the batches")
    from blackholes.pipelines.census import connect

    return connect(scheduler)


def _run(grid, configs, recorded, store, client, workers, runs_per_batch, check, progress, log,
         on_batch, t0) -> SweepResult:
    rows = store.rows()
    todo = [r for r in range(grid.size) if not store.finished(rows.get(r), r in recorded)]
    result = SweepResult([], {}, [], [], grid, store.out, skipped=grid.size - len(todo))
    workers = workers or default_workers(todo, configs)
    tasks = plan_batches(todo, configs, runs_per_batch=runs_per_batch, workers=1 if client else workers,
                         record={r: store.recording_path(r) for r in recorded})
    workers = max(1, min(workers, len(tasks)))
    if not check:
        tasks = [dataclasses.replace(t, check=False) for t in tasks]
    if log is not None:
        where = "a Dask cluster" if client is not None else f"{workers} local process{'es' * (workers > 1)}"
        done = f", {result.skipped:,} already done in {store.out}" if result.skipped else ""
        log(f"sweep: {len(todo):,} runs in {len(tasks):,} batches on {where}{done}")
    bar = _bar(sum(configs[r].steps for r in todo), progress)

    def handle(task, outcome):
        store.save(task, outcome)
        for row in outcome.rows:
            rows[row["run"]] = row
            result.trained += 1
            result.failed += row.get("error") is not None
        if on_batch is not None:
            on_batch(task, outcome)

    try:
        if tasks:
            if client is not None:
                run_dask(tasks, handle, client)
                if bar is not None:
                    bar(bar.total - bar.n)
            else:
                run_local(tasks, handle, workers, bar.update if bar is not None else None)
    except KeyboardInterrupt:
        result.interrupted = True
    finally:
        if bar is not None:
            bar.close()
        _collect(result, store, rows, grid)
    result.seconds = time.perf_counter() - t0
    return result


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


def _bar(total: int, enabled: bool):
    if not enabled or total == 0:
        return None
    from tqdm.auto import tqdm

    tqdm.monitor_interval = 0  # no monitor thread: the pool may then fork (see _pool_context)
    return tqdm(total=total, unit="run-step", unit_scale=True, dynamic_ncols=True, mininterval=0.5,
                file=sys.stderr)


def _collect(result: SweepResult, store: SweepStore, rows: dict[int, dict], grid: Grid) -> None:
    """The result's table and arrays, and ``steps.safetensors``, from every row of this grid."""
    mine = {r: row for r, row in rows.items() if 0 <= r < grid.size}
    result.runs = [mine[r] for r in sorted(mine)]
    path = store.write_steps(mine)
    if path is None:
        return
    from blackholes.io.safetensors import open_tensor, read_header

    header = read_header(path)
    result.run_ids = json.loads(header.metadata["runs"])
    result.step_numbers = json.loads(header.metadata["steps"])
    result.steps = {name: np.array(open_tensor(path, name, header)) for name in STEP_ARRAYS}
    result.files = {"runs": store.runs_file, "steps": path, "grid": store.out / "sweep.json"}
