"""Dynamics: does a black hole move as one rigid body, step by step?

The causal chain of the original analysis: tokens at one point get the same
logit, so the same gradient, so the same update, so they stay at one point. We
check every link at *every* recorded step of a training recording, exactly:

* identity is decided on the raw bits (bf16 as ``uint16``, f32 as ``uint32``);
* distances are direct differences accumulated in float64 (no
  ``|a|^2 + |b|^2 - 2ab`` shortcut), so bit-identical rows are at distance 0;
* only ``embeddings``, ``grads`` and ``logits`` are read, memory-mapped, in
  chunks of steps (numpy only: no torch on this path).

>>> result = analyze("run.safetensors", corpus="corpus.txt")   # tokens absent from the corpus
>>> result.untrained_tokens, result.identical_all_steps
([10, 11, 12, 13, 14, 15], {'logits': True, 'grads': True, 'positions': True})
>>> print(result.report())   # doctest: +ELLIPSIS
Recording: run.safetensors
...
"""

from __future__ import annotations

import hashlib
import os
from typing import Iterable

import numpy as np

from blackholes.analysis.dynamics_result import QUANTITIES, DynamicsResult, finite_or_none, json_safe
from blackholes.analysis.ids import as_int, parse_steps, parse_tokens
from blackholes.errors import BlackholesError
from blackholes.training.corpus import read_corpus
from blackholes.io.recording import Recording
from blackholes.io.dtypes import BITS, key_bits, to_float32, to_float64, ulp_key, ulp_spacing

DEFAULT_STEPS = (0, 1, 2, 10, 100, 1000, 10000)
REQUIRED_KEYS = ("embeddings", "grads", "logits")
NEARLY = 1e-3  # the original's "nearly identical" threshold

_CHUNK_BYTES = 8 << 20  # steps are processed ~8 MB at a time


# ---------------------------------------------------------------------------- analyze


def analyze(
    recording: str | os.PathLike,
    *,
    corpus: str | os.PathLike | bytes | None = None,
    tokens: Iterable[int] | str | None = None,
    steps: Iterable[int] | str = DEFAULT_STEPS,
) -> DynamicsResult:
    """Check, at every recorded step, that the untrained tokens keep identical
    logits, gradients and positions.

    Untrained tokens are the byte values absent from ``corpus`` (a path or bytes),
    or ``tokens`` (ids, or a string like ``"1,2,5-9"``), or else the recording's
    ``never_seen`` metadata. ``steps`` are the *training* steps printed in the
    original's three sections.

    >>> r = analyze("run.safetensors")                  # untrained = the recording's never_seen
    >>> r.untrained_source, r.first_divergence
    ('metadata', {'logits': None, 'grads': None, 'positions': None})
    """
    rec = _Recording(recording)
    notes = _recording_notes(rec)
    vocab = rec.shape[1]
    untrained, source = _untrained_tokens(rec, corpus, tokens, notes)
    held = set(untrained)
    trained = [t for t in range(vocab) if t not in held]
    sample_steps = parse_steps(steps, last=int(rec.steps[-1]))
    never_drawn = never_drawn_tokens(rec.metadata, untrained, vocab=vocab)
    if never_drawn is None and ("input_counts" in rec.metadata or "target_counts" in rec.metadata):
        notes.append(f"ignored input_counts/target_counts metadata (not two lists of length {vocab})")

    U = np.asarray(untrained, dtype=np.intp)
    T = np.asarray(trained, dtype=np.intp)
    S = np.asarray(never_drawn or [], dtype=np.intp)
    per_group = {quantity: _track_groups(rec, key, _tracked_sets(U, T, S))
                 for quantity, key in (("positions", "embeddings"), ("grads", "grads"), ("logits", "logits"))}
    hole = _track_hole(rec, U)
    skips = _skips(rec.shape[0])
    series: dict[str, np.ndarray] = {"step": rec.steps.copy()}
    identity = _identity(per_group, skips, rec.steps, series)
    series.update(_motion_series(rec, per_group["logits"], hole))
    never = _never_drawn_summary(per_group, skips, rec.steps, series) if len(S) else None

    bad = np.flatnonzero(~np.isfinite(hole["centroid_norm"]))
    if bad.size:
        notes.append(f"the hole's positions are not finite (NaN or inf) at {bad.size} step(s), first at step "
                     f"{int(rec.steps[bad[0]])}: the run diverged there")
    sampled, skipped = _sampled_sections(rec, U, sample_steps, notes)
    result = DynamicsResult(
        recording=str(rec.path), dtype=rec.dtype, shape=rec.shape,
        untrained_tokens=[int(t) for t in U], untrained_source=source, trained_tokens=[int(t) for t in T],
        recorded_steps=[int(s) for s in rec.steps], **identity,
        never_drawn_tokens=never_drawn, never_drawn=never, freeze=_freeze_summary(hole, rec.steps, rec.dtype),
        sampled=sampled, skipped_steps=skipped, notes=notes, metadata=rec.summary_metadata(), series=series,
        rigid_body=all(identity["identical_all_steps"].values()),
    )
    result.verdict = _verdict(result)
    return result


def _recording_notes(rec) -> list[str]:
    """What a reader should know about the recording itself (odd metadata, an interrupted run)."""
    notes = []
    if rec.not_strings:
        notes.append(f"metadata {', '.join(map(repr, rec.not_strings))} not stored as text (safetensors metadata "
                     "is str -> str); taken as the value given")
    if rec.metadata.get("complete") in (False, "false"):
        at = rec.meta_json("interrupted_at_step")
        notes.append("the recording is incomplete (training was interrupted"
                     + (f" at step {at}" if at is not None else "") + "): it ends early")
    return notes


def _tracked_sets(U, T, S) -> dict:
    """The token sets followed at every step: name -> (ids, reference token)."""
    groups = {"untrained": (U, int(U[0]))}
    if len(T) >= 2:
        groups["trained"] = (T, int(T[0]))
    if len(S):
        # the second set is "in the hole" when it matches the hole's first token
        groups["never_drawn"] = (np.concatenate([U[:1], S]), int(U[0]))
    return groups


def _skips(n: int) -> dict[str, np.ndarray]:
    """Per quantity, the records where it does not apply: no gradient exists at the initialisation."""
    no_grad = np.zeros(n, dtype=bool)
    no_grad[0] = True
    return {q: no_grad if q == "grads" else np.zeros(n, dtype=bool) for q in QUANTITIES}


def _identity(per_group: dict, skips: dict, steps: np.ndarray, series: dict) -> dict:
    """Bit identity of each quantity at every step, for the untrained and the trained tokens.

    Adds the ``*_spread`` / ``*_identical`` series; returns the DynamicsResult fields."""
    out = {k: {} for k in ("identical_all_steps", "first_divergence", "value_equal_not_bitwise",
                           "trained_identical_all_steps", "trained_first_divergence")}
    for quantity in QUANTITIES:
        skip = skips[quantity]
        for prefix, name in (("", "untrained"), ("trained_", "trained")):
            g = per_group[quantity].get(name)
            if g is None:
                continue
            series[f"{prefix}{quantity}_spread"] = np.where(skip, np.nan, g["spread"])
            series[f"{prefix}{quantity}_identical"] = np.where(skip, np.nan, g["identical"].astype(np.float64))
            out[f"{prefix}identical_all_steps"][quantity] = bool(g["identical"][~skip].all())
            out[f"{prefix}first_divergence"][quantity] = _first_false(g["identical"], skip, steps)
        g = per_group[quantity]["untrained"]
        out["value_equal_not_bitwise"][quantity] = [
            int(steps[i]) for i in np.flatnonzero(~g["identical"] & (g["spread"] == 0) & ~skip)]
    return out


def _motion_series(rec, logit_stats: dict, hole: dict) -> dict[str, np.ndarray]:
    """Per-step logits, the shared gradient, and how far and fast the hole's centroid moves."""
    series = {"untrained_logit": logit_stats["untrained"]["mean"]}
    if "trained" in logit_stats:
        series["trained_logit_mean"] = logit_stats["trained"]["mean"]
        series["trained_logit_min"] = logit_stats["trained"]["min"]
        series["trained_logit_max"] = logit_stats["trained"]["max"]
    grad_norm = hole["shared_grad_norm"].copy()
    grad_norm[0] = np.nan
    series["shared_grad_norm"] = grad_norm
    series["centroid_norm"] = hole["centroid_norm"]
    from_start = hole["centroid"] - hole["centroid"][0]
    series["centroid_distance_from_start"] = np.sqrt(np.einsum("ij,ij->i", from_start, from_start))
    series["displacement"] = hole["displacement"]
    speed = np.full(rec.shape[0], np.nan)
    speed[1:] = hole["displacement"][1:] / np.diff(rec.steps).astype(np.float64)
    series["speed"] = speed
    series["frozen_fraction"] = hole["frozen_fraction"]
    series["update_ulps_median"] = hole["update_ulps"]
    if rec.losses is not None:
        series["loss"] = rec.losses
    return series


def _never_drawn_summary(per_group: dict, skips: dict, steps: np.ndarray, series: dict) -> dict:
    """Does the second set (in the corpus, never drawn into a batch) stay in the hole?"""
    nd = {q: per_group[q]["never_drawn"]["identical"] for q in QUANTITIES}
    never = {
        "identical_all_steps": {q: bool(nd[q][~skips[q]].all()) for q in QUANTITIES},
        "first_divergence": {q: _first_false(nd[q], skips[q], steps) for q in QUANTITIES},
    }
    never["stays_in_hole"] = all(never["identical_all_steps"].values())
    series["never_drawn_positions_identical"] = nd["positions"].astype(np.float64)
    return never


# ---------------------------------------------------------------------------- reading


class _Recording(Recording):
    """A training recording as dynamics reads it: embeddings, grads and logits at two records
    or more, and the losses (float64) when recorded."""

    def __init__(self, path: str | os.PathLike):
        super().__init__(path, require=REQUIRED_KEYS)
        n, vocab, dim = self.shape
        if n < 2 or vocab < 1 or dim < 1:
            raise BlackholesError(f"recording too small to analyse: 'embeddings' is {list(self.shape)} "
                                  "(need >= 2 steps)")
        self.losses = None
        if "losses" in self and self.dtype_of("losses") in BITS:
            self.losses = _floats(self.tensor("losses"), self.dtype_of("losses")).astype(np.float64)

    def meta_json(self, key: str):
        """The decoded value of metadata ``key`` (None when absent); a value that is not JSON stays text."""
        return self.metadata.get(key)

    def summary_metadata(self) -> dict:
        keep = ("sigma", "seed", "dtype", "precision", "init", "complete", "interrupted_at_step", "corpus_sha256",
                "centre")
        out = {k: self.metadata[k] for k in keep if k in self.metadata}
        if self.numerics is not None:  # also for recordings made before numerics: read from `compiled`
            out["numerics"] = self.numerics
        return json_safe(out)


def _untrained_tokens(rec: _Recording, corpus, tokens, notes: list[str]) -> tuple[list[int], str]:
    vocab = rec.shape[1]
    if corpus is not None and tokens is not None:
        raise BlackholesError("give either a corpus or tokens, not both")
    if corpus is not None:
        data = read_corpus(corpus).data
        arr = np.frombuffer(bytes(data), dtype=np.uint8)
        if arr.size == 0:
            raise BlackholesError("the corpus is empty")
        present = np.bincount(arr, minlength=256) > 0
        outside = np.flatnonzero(present[vocab:]) + vocab
        if outside.size:
            b = int(outside[0])
            where = int(np.flatnonzero(arr == b)[0])
            raise BlackholesError(
                f"corpus byte {b} (0x{b:02X}) at offset {where} is outside the vocabulary of {vocab} tokens"
            )
        untrained = [t for t in range(vocab) if not present[t]]
        sha = rec.meta_json("corpus_sha256")
        if isinstance(sha, str) and sha != hashlib.sha256(bytes(data)).hexdigest():
            notes.append("the corpus differs from the one this recording was trained on (sha256 mismatch)")
        source = "corpus"
    elif tokens is not None:
        untrained = parse_tokens(tokens, vocab=vocab) if isinstance(tokens, str) else sorted({as_int(t, "token id") for t in tokens})
        source = "tokens"
    else:
        never = rec.meta_json("never_seen")
        if never is None:
            raise BlackholesError(
                "the recording has no 'never_seen' metadata: pass --corpus PATH or --tokens IDS"
            )
        if not isinstance(never, list) or not all(isinstance(t, int) for t in never):
            raise BlackholesError("recording metadata 'never_seen' must be a JSON list of token ids")
        untrained = sorted(set(never))
        source = "metadata"
    bad = [t for t in untrained if not 0 <= t < vocab]
    if bad:
        raise BlackholesError(f"token id {bad[0]} is outside the vocabulary (0-{vocab - 1})")
    if len(untrained) == 0:
        raise BlackholesError(f"no untrained tokens: every one of the {vocab} token ids occurs ({source})")
    if len(untrained) == 1:
        raise BlackholesError(
            f"only one untrained token ({untrained[0]}): identity needs at least two tokens to compare"
        )
    return untrained, source


def never_drawn_tokens(metadata: dict, untrained: Iterable[int] = (), vocab: int | None = None) -> list[int] | None:
    """Tokens never drawn into a batch, neither as input nor as target, and not already untrained.

    ``metadata`` is a recording's decoded metadata (``input_counts``, ``target_counts``);
    None when it has no two count lists (of length ``vocab``, when given).
    With a tied embedding both roles push a row away from the hole: as an input its
    row receives the lookup gradient, as a target the ``-1`` of softmax-minus-one-hot.
    A token drawn in only one role still leaves, so the test is "never as input AND
    never as target".

    >>> never_drawn_tokens({"input_counts": [0, 0, 5, 0], "target_counts": [0, 0, 0, 2]}, untrained=[0])
    [1]
    """
    inputs, targets = metadata.get("input_counts"), metadata.get("target_counts")
    if not (isinstance(inputs, list) and isinstance(targets, list) and len(inputs) == len(targets)):
        return None
    if vocab is not None and len(inputs) != vocab:
        return None
    held = set(untrained)
    return [t for t in range(len(inputs)) if inputs[t] == 0 and targets[t] == 0 and t not in held]


# ---------------------------------------------------------------------------- per-step tracking


def _bits(raw: np.ndarray, dtype: str) -> np.ndarray:
    return raw.view(BITS[dtype])


def _floats(raw: np.ndarray, dtype: str) -> np.ndarray:
    """Values of a tensor given as storage (float) or as raw bits (unsigned ints)."""
    raw = np.asarray(raw)
    if dtype == "BF16":
        return to_float32(raw, dtype)
    if raw.dtype.kind == "u":  # raw bits: reinterpret, never convert the integers
        raw = raw.view({"F16": np.float16, "F32": np.float32, "F64": np.float64}[dtype])
    return raw.astype(np.float64 if dtype == "F64" else np.float32)


def _key_value(keys: np.ndarray, dtype: str) -> np.ndarray:
    """float64 values of ordered keys (:func:`~blackholes.io.dtypes.ulp_key`)."""
    return to_float64(key_bits(keys, dtype), dtype)


def _chunks(n: int, row_bytes: int):
    size = max(1, _CHUNK_BYTES // max(row_bytes, 1))
    for a in range(0, n, size):
        yield a, min(n, a + size)


def _track_groups(rec: _Recording, key: str, groups: dict) -> dict:
    """Per step and group: bit identity with the group's reference row, and the
    spread = max |x - x_ref| over the group's rows and coordinates (float64).

    One pass over the tensor: per coordinate, the max and min of an order-preserving
    integer key give identity (max == min) and the spread without widening every row.
    """
    raw = rec.tensor(key)
    dtype = rec.dtype_of(key)
    n = raw.shape[0]
    row_bytes = int(np.prod(raw.shape[1:])) * raw.dtype.itemsize
    out = {
        name: {"identical": np.zeros(n, bool), "spread": np.zeros(n), "mean": np.zeros(n),
               "min": np.zeros(n), "max": np.zeros(n)}
        for name in groups
    }
    for a, b in _chunks(n, row_bytes):
        keys = ulp_key(_bits(np.asarray(raw[a:b]), dtype), dtype, native=True)
        for name, (idx, ref) in groups.items():
            g = keys[:, idx]  # (steps, rows[, dim])
            kmax, kmin = g.max(axis=1), g.min(axis=1)
            same = kmax == kmin
            o = out[name]
            o["identical"][a:b] = same.reshape(b - a, -1).all(axis=1)
            fref = _key_value(keys[:, ref], dtype)
            fmax, fmin = _key_value(kmax, dtype), _key_value(kmin, dtype)
            with np.errstate(invalid="ignore"):
                dev = np.maximum(fmax - fref, fref - fmin)
            o["spread"][a:b] = dev.reshape(b - a, -1).max(axis=1)
            if raw.ndim == 2:  # logits: per-step summary values for the plots
                fl = _key_value(g, dtype)
                o["mean"][a:b] = fl.mean(axis=1)
                o["min"][a:b] = fmin
                o["max"][a:b] = fmax
    return out


def _track_hole(rec: _Recording, U: np.ndarray) -> dict:
    """The hole as one body: centroid, its displacement per step, the shared gradient's
    norm, and which fraction of its coordinates did not change at all (frozen)."""
    emb, grads = rec.tensor("embeddings"), rec.tensor("grads")
    edt, gdt = rec.dtype_of("embeddings"), rec.dtype_of("grads")
    n, _, dim = rec.shape
    centroid = np.zeros((n, dim))
    grad_norm = np.zeros(n)
    frozen = np.full(n, np.nan)
    grad_zero = np.zeros(n, bool)
    first_row = np.zeros((n, dim))
    row_bytes = len(U) * dim * emb.dtype.itemsize
    prev = None
    for a, b in _chunks(n, row_bytes):
        eb = _bits(np.asarray(emb[a:b][:, U]), edt)
        first_row[a:b] = _floats(eb[:, 0], edt)
        gb = _bits(np.asarray(grads[a:b][:, U]), gdt)
        centroid[a:b] = group_mean(eb, edt)
        g = group_mean(gb, gdt)
        grad_norm[a:b] = np.sqrt(np.einsum("ij,ij->i", g, g))
        # a gradient of +0/-0 everywhere: nothing pushed the hole at this step
        grad_zero[a:b] = ~((gb << 1) != 0).reshape(b - a, -1).any(axis=1)
        stacked = eb if prev is None else np.concatenate([prev, eb])
        same = (stacked[1:] == stacked[:-1]).reshape(len(stacked) - 1, -1).mean(axis=1)
        frozen[(a + 1 if prev is None else a):b] = same
        prev = eb[-1:]
    # how far the hole's first token moved, in units in the last place of the dtype
    update_ulps = np.full(n, np.nan)
    with np.errstate(invalid="ignore"):
        update_ulps[1:] = np.median(np.abs(np.diff(first_row, axis=0)) / ulp_spacing(first_row[:-1], edt), axis=1)
    displacement = np.full(n, np.nan)
    diff = np.diff(centroid, axis=0)
    displacement[1:] = np.sqrt(np.einsum("ij,ij->i", diff, diff))
    return {
        "centroid": centroid,
        "centroid_norm": np.sqrt(np.einsum("ij,ij->i", centroid, centroid)),
        "displacement": displacement,
        "shared_grad_norm": grad_norm,
        "frozen_fraction": frozen,
        "grad_zero": grad_zero,
        "update_ulps": update_ulps,
    }


def group_mean(bits: np.ndarray, dtype: str) -> np.ndarray:
    """Mean over the group's rows (float64); exact when the rows are bit-identical."""
    steps = bits.shape[0]
    same = (bits == bits[:, :1]).reshape(steps, -1).all(axis=1)
    mean = _floats(bits[:, 0], dtype).astype(np.float64)
    if not same.any():
        mean = _floats(bits, dtype).mean(axis=1, dtype=np.float64)  # float64 accumulation, no float64 copy
    elif not same.all():
        mean[~same] = _floats(bits[~same], dtype).mean(axis=1, dtype=np.float64)
    return mean


def _first_false(identical: np.ndarray, skip: np.ndarray, steps: np.ndarray) -> int | None:
    broken = np.flatnonzero(~identical & ~skip)
    return int(steps[broken[0]]) if broken.size else None


def _freeze_summary(hole: dict, steps: np.ndarray, dtype: str) -> dict:
    frac = hole["frozen_fraction"]
    # NaN rows keep their bits too, but a diverged hole is not "frozen"
    frozen = np.flatnonzero((frac == 1.0) & np.isfinite(hole["centroid_norm"]))
    pushed = frozen[~hole["grad_zero"][frozen]]
    moved = frac[1:]
    ulps = hole["update_ulps"][1:]
    return {
        "update_ulps_median_first": finite_or_none(ulps[0]) if ulps.size else None,
        "update_ulps_median_last": finite_or_none(ulps[-1]) if ulps.size else None,
        "steps_median_update_below_1_ulp": int(np.count_nonzero(ulps < 1)),
        "dtype": dtype,
        "frozen_steps": [int(steps[i]) for i in frozen],
        "frozen_count": int(frozen.size),
        "frozen_with_gradient": [int(steps[i]) for i in pushed],
        "frozen_with_gradient_count": int(pushed.size),
        "first_frozen": int(steps[frozen[0]]) if frozen.size else None,
        "mean_frozen_fraction": float(np.mean(moved)) if moved.size else None,
        "steps_partly_frozen": int(np.count_nonzero((moved > 0) & (moved < 1))),
    }


# ---------------------------------------------------------------------------- sampled sections


def _pairwise(x: np.ndarray) -> np.ndarray:
    """Exact pairwise Euclidean distances of rows (i < j): direct differences, float64."""
    x = np.asarray(x, dtype=np.float64)
    out = []
    for i in range(len(x) - 1):
        d = x[i + 1:] - x[i]
        out.append(np.sqrt(np.einsum("ij,ij->i", d, d)))
    return np.concatenate(out) if out else np.zeros(0)


def _std(x: np.ndarray) -> float:
    """Sample std (ddof=1, as torch); exactly 0 for equal values, not a rounding residue."""
    return 0.0 if np.all(x == x[0]) else float(x.std(ddof=1))


def _verdict_word(bit_identical: bool, value_equal: bool, metric: float) -> str:
    if bit_identical:
        return "IDENTICAL"
    if value_equal:
        return "equal in value, not bitwise"
    if metric < NEARLY:
        return "nearly identical"
    return "vary"


def _sampled_sections(rec: _Recording, U: np.ndarray, steps: list[int], notes: list[str]):
    index_of = {int(s): i for i, s in enumerate(rec.steps)}
    last = int(rec.steps[-1])
    out, skipped = [], []
    emb, grads, logits = rec.tensor("embeddings"), rec.tensor("grads"), rec.tensor("logits")
    edt, gdt, ldt = rec.dtype_of("embeddings"), rec.dtype_of("grads"), rec.dtype_of("logits")
    for step in steps:
        i = index_of.get(step)
        if i is None:
            skipped.append(step)
            continue
        entry = {"step": step, "index": i}
        lb = _bits(np.asarray(logits[i, U]), ldt)
        lv = _floats(lb, ldt).astype(np.float64)
        ident = bool((lb == lb[0]).all())
        equal = bool((lv == lv[0]).all())
        std = _std(lv)
        entry["logits"] = {
            "mean": float(lv.mean()), "std": std, "range": float(lv.max() - lv.min()),
            "bit_identical": ident, "value_equal": equal, "verdict": _verdict_word(ident, equal, std),
        }
        for name, tensor, dt in (("grads", grads, gdt), ("positions", emb, edt)):
            if name == "grads" and i == 0:
                continue  # no gradient at the initialisation
            xb = _bits(np.asarray(tensor[i][U]), dt)
            xv = _floats(xb, dt).astype(np.float64)
            d = _pairwise(xv)
            ident = bool((xb == xb[0]).all())
            equal = bool((xv == xv[0]).all())
            dmax = float(d.max()) if d.size else 0.0
            e = {"pairwise_max": dmax, "pairwise_mean": float(d.mean()) if d.size else 0.0,
                 "bit_identical": ident, "value_equal": equal, "verdict": _verdict_word(ident, equal, dmax)}
            if name == "grads":
                norms = np.sqrt(np.einsum("ij,ij->i", xv, xv))
                e["norm_mean"] = float(norms.mean())
                e["norm_std"] = _std(norms)
            entry[name] = e
        out.append(entry)
    beyond = [s for s in skipped if s > last]
    between = [s for s in skipped if s <= last]
    if beyond:
        notes.append(f"step{'s' if len(beyond) > 1 else ''} {', '.join(map(str, beyond))}: beyond the "
                     f"recording's last step {last}; skipped")
    if between:
        notes.append(f"step{'s' if len(between) > 1 else ''} {', '.join(map(str, between))}: not recorded "
                     f"(the recording keeps only some steps); skipped")
    return out, skipped


# ---------------------------------------------------------------------------- verdict and report


def _verdict(r: DynamicsResult) -> str:
    n = len(r.recorded_steps)
    span = f"{r.recorded_steps[0]}-{r.recorded_steps[-1]}"
    k = len(r.untrained_tokens)
    if r.rigid_body:
        return (f"The black hole moves as a RIGID BODY: at every one of the {n} recorded steps ({span}) "
                f"the {k} untrained tokens have bit-identical logits, gradients and positions.")
    fd = r.first_divergence
    if fd["positions"] == r.recorded_steps[0]:
        return (f"NOT a rigid body: the {k} untrained tokens are at different positions from step "
                f"{fd['positions']} on (they never shared one point, e.g. sigma > 0 initial noise).")
    broken = sorted((s, q) for q, s in fd.items() if s is not None)
    first_step, _ = broken[0]
    firsts = [q for s, q in broken if s == first_step]
    later = ", ".join(f"{q} at step {s}" for s, q in broken if s != first_step)
    names = firsts[0] if len(firsts) == 1 else ", ".join(firsts[:-1]) + " and " + firsts[-1]
    text = (f"NOT a rigid body: the identity first breaks at step {first_step} "
            f"({names} differ first")
    text += f"; then {later})." if later else ")."
    return text + _broken_link(r, first_step)


def _broken_link(r: DynamicsResult, step: int) -> str:
    """Which link of the causal chain failed first. A recording from `blackholes train`
    computes logits and gradients of step s from the positions of step s-1."""
    i = r.recorded_steps.index(step)
    same = {q: r.series[f"{q}_identical"] for q in QUANTITIES}
    if i == 0:
        return ""
    if same["positions"][i] == 0 and same["grads"][i] == 1 and same["logits"][i] == 1:
        return (" The positions split although logits and gradients were still identical: link 4 failed "
                "(the update itself differed, e.g. noise or optimizer state).")
    if same["grads"][i] == 0 and same["logits"][i] == 1:
        return (" The gradients split although the logits were identical: link 3 failed (a token drawn as an "
                "input or a target gets a gradient of its own).")
    if same["logits"][i] == 0 and same["positions"][i - 1] == 1 and same["positions"][i] == 1:
        return (" The logits split although the positions were identical before and after: link 1-2 failed "
                "(identical rows scored differently).")
    return ""


# ---------------------------------------------------------------------------- helpers


