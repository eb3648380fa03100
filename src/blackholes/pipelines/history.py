"""``history``: the life of dead tokens across a model's checkpoints, exactly.

The series (:mod:`blackholes.sources.series`) is an ordered list of checkpoints. Each is an
independent task, :func:`read_checkpoint`: read the one embedding matrix (by byte range for a
remote source), group its rows bit for bit and keep one 128-bit digest per row; what comes
back is small (sizes, hole memberships, digests), so the matrices are never held together.
The lifecycle analysis of a training recording (:func:`~blackholes.analysis.lifecycle.census_of_partitions`)
then runs on the partitions and on "which rows changed" (digests that differ): fissions,
mergers, lineages, last motion, freezes, the same code as ``dynamics --census``.

An output folder holds::

    history.jsonl          one row per checkpoint (and matrix), appended as each finishes
    digests/<name>.npy     each checkpoint's row digests (a re-run reads these, not the matrices)
    history.json           checkpoints, events, holes, last motion, freezes
    history.md, .html      the page; plots/*.png its figures

A re-run with the same ``out`` reads only the checkpoints it has no good row for. A checkpoint
that cannot be read is a row with its error, and the series goes on without it.

>>> r = history(["run/checkpoints"], out="h")                  # doctest: +SKIP
>>> [c["holes"] for c in r.checkpoints], [e["kind"] for e in r.events][:2]   # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from blackholes.errors import BlackholesError
from blackholes.io.jsonl import JsonlStore
from blackholes.sources.series import Checkpoint, expand_series

IDENTITY = "raw bits, as scan: row.tobytes() equality (grouped by hash, then compared byte for byte)"
MOTION = ("a row moved between two checkpoints when its 128-bit digest (the census's row hash of its bytes, "
          "and of its 8-byte words through an xorshift) differs; a change inside one 8-byte word always shows")


# ---------------------------------------------------------------------------- one checkpoint (a task)


def read_checkpoint(source: str, record_step: int | None = None, matrix: str | None = None,
                    near: int | None = None) -> dict:
    """Read one checkpoint's matrix and return its small summary (picklable, for any worker).

    Only the matrix is read (by byte range for a remote source). The summary holds the shape,
    dtype, the holes (groups of two or more bit-identical rows, largest first, as sorted token
    ids), one 128-bit digest per row (uint64 [V, 2]), the bytes read and, with ``near=K``, the
    halo: rows within K ULPs of a hole's rows, in no hole.

    >>> s = read_checkpoint("model.safetensors")                 # doctest: +SKIP
    >>> s["vocab"], [len(h) for h in s["holes"]]                  # doctest: +SKIP
    """
    from blackholes.analysis.lifecycle import row_groups
    from blackholes.sources import load_matrix

    t0 = time.perf_counter()
    m = load_matrix(source, matrix=None if record_step is not None else matrix, step=record_step)
    ids, digests = row_groups(m.array)
    holes = _holes_of(ids)
    halo, note = None, None
    if near is not None:
        halo, note = _halo(m, holes, near)
    V, D = m.shape
    return {"vocab": V, "dim": D, "dtype": m.dtype, "tensor": m.key, "revision": m.revision, "tied": m.tied,
            "remote": m.bytes_read is not None,
            "bytes_read": int(m.bytes_read if m.bytes_read is not None else m.array.nbytes),
            "holes": [h.tolist() for h in holes], "halo": halo, "note": note, "digests": digests,
            "files": [str(p) for p in m.read_files()],
            "seconds": round(time.perf_counter() - t0, 4)}


def _holes_of(ids: np.ndarray) -> list[np.ndarray]:
    """Groups of two or more tokens from group ids: largest first, ties by smallest token."""
    sizes = np.bincount(ids, minlength=len(ids))
    holes = [np.flatnonzero(ids == g) for g in np.flatnonzero(sizes >= 2)]
    return sorted(holes, key=lambda h: (-len(h), int(h[0])))


def _halo(m, holes: list[np.ndarray], k: int) -> tuple[int | None, str | None]:
    """Rows within ``k`` ULPs of a hole's cluster that are in no hole (analysis.near)."""
    from blackholes.analysis.near import check_k, near_clusters

    k = check_k(k)
    if m.quantization:
        return None, f"--near skipped: ULPs are not defined for {m.quantization} blocks"
    found = near_clusters(m.array, m.dtype, k, groups=holes)
    return sum(len(c.singletons) for c in found.clusters if c.holes), None


# ---------------------------------------------------------------------------- the store (resume)


class HistoryStore:
    """``history.jsonl`` (rows appended and fsynced) and ``digests/`` in one output folder."""

    def __init__(self, out: str | os.PathLike):
        self.out = Path(out)
        self.path = self.out / "history.jsonl"
        self.jsonl = JsonlStore(self.path)

    def open(self) -> None:
        if self.out.exists() and not self.out.is_dir():
            raise BlackholesError(f"--out must be a folder: {self.out} is a file")
        (self.out / "digests").mkdir(parents=True, exist_ok=True)

    def rows(self) -> dict[str, dict]:
        """The newest good row of each task key whose digests are still there (a row that does not
        look like one of ours is read again, never trusted)."""
        found = {r["key"]: r for r in self.jsonl.rows() if isinstance(r.get("key"), str)}
        return {k: r for k, r in found.items() if _well_formed(r) and self._digest_file(r).is_file()}

    def _digest_file(self, row: dict) -> Path:
        return self.out / "digests" / f"{_file_name(row['key'])}.npy"

    def digests(self, row: dict) -> np.ndarray | None:
        """The row's digests, or None when the file is not what was written (then it is read again)."""
        try:
            d = np.load(self._digest_file(row), allow_pickle=False)
        except (OSError, ValueError):
            return None
        return d if d.dtype == np.uint64 and d.shape == (row["vocab"], 2) else None

    def append(self, row: dict, digests: np.ndarray | None) -> None:
        from blackholes.io.atomic import atomic_path

        if digests is not None:  # the digests first: a row is only ever written with its digests beside it
            with atomic_path(self._digest_file(row)) as tmp, open(tmp, "wb") as f:
                np.save(f, digests, allow_pickle=False)
        self.jsonl.append(row)


def _well_formed(row: dict) -> bool:
    """A good row as :func:`_row` writes it: sizes, and holes of token ids inside the vocabulary."""
    ints = all(isinstance(row.get(k), int) and not isinstance(row.get(k), bool) and row[k] > 0
               for k in ("vocab", "dim", "bytes_read"))
    if row.get("error") is not None or not ints or not isinstance(row.get("holes"), list):
        return False
    V = row["vocab"]
    return all(isinstance(h, list) and len(h) >= 2 and all(isinstance(t, int) and 0 <= t < V for t in h)
               and h == sorted(set(h)) for h in row["holes"]) and isinstance(row.get("dtype"), str)


def _file_name(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:24]


# ---------------------------------------------------------------------------- tasks


@dataclass(frozen=True)
class HistoryTask:
    """One checkpoint and one matrix: what :func:`read_checkpoint` is called with."""

    checkpoint: Checkpoint
    matrix: str | None  # None: scan's default (the output matrix; the input one when tied)
    near: int | None = None

    @property
    def key(self) -> str:
        return f"{self.checkpoint.key}|{self.matrix or 'default'}|near={self.near}"

    def args(self) -> tuple:
        return (self.checkpoint.source, self.checkpoint.record_step, self.matrix, self.near)


def run_checkpoints(tasks: list[HistoryTask], handle, *, workers: int | None = None, scheduler=None,
                    progress: str | None = None) -> None:
    """Run :func:`read_checkpoint` for every task on the shared runner (here, a local process pool
    or a Dask cluster); ``handle(task, summary, error)`` in series order, in this process."""
    from blackholes.pipelines.runner import Task, run_tasks

    jobs = {t.key: t for t in tasks}
    client = scheduler if hasattr(scheduler, "submit") else None  # an open distributed.Client
    run_tasks([Task(t.key, read_checkpoint, t.args(), label=t.checkpoint.label) for t in tasks],
              lambda job, outcome: handle(jobs[job.key], outcome.value, outcome.error),
              workers=workers, scheduler=None if client is not None else scheduler, client=client,
              progress=progress)


def _row(task: HistoryTask, summary: dict | None, error: str | None) -> dict:
    cp = task.checkpoint
    row = {"key": task.key, "label": cp.label, "source": cp.source, "step": cp.step,
           "matrix": task.matrix or "default", "error": error}
    if summary is not None:
        row.update({k: v for k, v in summary.items() if k != "digests"})
    return row


# ---------------------------------------------------------------------------- the result


@dataclass
class HistoryResult:
    """What :func:`history` found: one entry per checkpoint (and matrix), the events between
    consecutive checkpoints, and per matrix the holes, lineages, last motion and freezes.

    ``to_json()`` is ``history.json``; ``to_pandas()`` the checkpoints as a DataFrame.
    """

    checkpoints: list[dict]
    events: list[dict]
    matrices: dict[str, dict]  # per matrix: holes, lineages, last_motion, frozen_from, formed, resizes
    sources: list[str]
    revisions: str | None = None
    near: int | None = None
    bytes_read: int = 0
    seconds: float = 0.0
    read: int = 0  # checkpoints read by this run (the others came from a previous run's rows)
    out: Path | None = None
    censuses: dict = field(default_factory=dict, repr=False)  # matrix -> [lifecycle.Census per segment]

    def to_json(self) -> dict:
        return {
            "history": {"sources": self.sources, "revisions": self.revisions, "near": self.near,
                        "identity": IDENTITY, "motion": MOTION, "checkpoints": len(self.good()),
                        "errors": sum(1 for c in self.checkpoints if c.get("error")),
                        "bytes_read": self.bytes_read, "read_now": self.read, "seconds": round(self.seconds, 3)},
            "checkpoints": self.checkpoints,
            "events": self.events,
            "matrices": self.matrices,
        }

    def good(self) -> list[dict]:
        """The checkpoints that were read."""
        return [c for c in self.checkpoints if not c.get("error")]

    def to_pandas(self):
        """The checkpoints as a pandas DataFrame (one row per checkpoint and matrix)."""
        try:
            import pandas as pd
        except ImportError:
            raise BlackholesError("to_pandas() needs pandas: pip install pandas") from None
        cols = ["label", "step", "matrix", "source", "distinct", "holes", "tokens_in_holes", "largest",
                "hole_sizes", "halo", "bytes_read", "error"]
        return pd.DataFrame([{k: c.get(k) for k in cols} for c in self.checkpoints], columns=cols)


# ---------------------------------------------------------------------------- the analysis


def analyse(rows: list[dict], digests: dict[str, np.ndarray]) -> tuple[list[dict], list[dict], dict, dict]:
    """Checkpoint entries, events and per-matrix sections from rows in series order."""
    checkpoints, events, matrices, censuses = [], [], {}, {}
    for name in dict.fromkeys(r["matrix"] for r in rows):
        mine = [r for r in rows if r["matrix"] == name]
        entries, section, evs, cs = _one_matrix(mine, digests)
        checkpoints += entries
        events += evs
        matrices[name], censuses[name] = section, cs
    events.sort(key=lambda e: (e["step"], e["matrix"], _KIND_ORDER.get(e["kind"], 9)))
    return checkpoints, events, matrices, censuses


_KIND_ORDER = {"resize": 0, "fission": 1, "merger": 2, "joined": 3, "left": 4}


def _one_matrix(rows: list[dict], digests: dict[str, np.ndarray]):
    good = [r for r in rows if not r.get("error")]
    if len(good) < 2:
        what = f"{len(rows)} checkpoint" + ("s" if len(rows) != 1 else "")
        bad = [r for r in rows if r.get("error")]
        why = f" ({len(bad)} could not be read: {bad[0]['label']}: {bad[0]['error']})" if bad else ""
        raise BlackholesError(f"a history needs at least 2 readable checkpoints; this series has {what}{why}")
    dims = {r["dim"] for r in good}
    if len(dims) > 1:
        a = good[0]
        b = next(r for r in good if r["dim"] != a["dim"])
        raise BlackholesError(f"mixed matrix widths: {a['label']} is {a['vocab']:,} x {a['dim']:,} but "
                              f"{b['label']} is {b['vocab']:,} x {b['dim']:,}; a history follows one matrix")
    canon = _canonical_ids(good)
    entries = [_entry(r, canon) for r in rows]
    segments = _segments(good)
    censuses, events = [], []
    for i, seg in enumerate(segments):
        before = segments[i - 1][-1] if i else None
        if before is not None:
            events.append(_resize_event(before, seg[0]))
        if len(seg) >= 2:
            c = _segment_census(seg, before, digests)
            censuses.append(c)
            events += [_census_event(e, seg, rows[0]["matrix"]) for e in c.events]
    events += _dead_set_events(good)
    section = _section(good, segments, censuses, canon)
    return entries, section, events, censuses


def _canonical_ids(good: list[dict]) -> dict[tuple, int]:
    """A hole id per membership, numbered in order of first appearance (ties: smallest token):
    the same id at every checkpoint where a hole has exactly those members."""
    canon: dict[tuple, int] = {}
    for r in good:
        for h in sorted(r["holes"], key=lambda h: h[0]):
            canon.setdefault(tuple(h), len(canon) + 1)
    return canon


def _entry(r: dict, canon: dict[tuple, int]) -> dict:
    keep = ("label", "step", "source", "matrix", "error")
    if r.get("error"):
        return {k: r.get(k) for k in keep}
    sizes = [len(h) for h in r["holes"]]
    entry = {k: r.get(k) for k in keep}
    entry.update({
        "distinct": r["vocab"] - sum(sizes) + len(sizes), "holes": len(sizes), "tokens_in_holes": sum(sizes),
        "largest": max(sizes, default=0), "hole_sizes": sizes, "hole_ids": [canon[tuple(h)] for h in r["holes"]],
        "vocab": r["vocab"], "dim": r["dim"], "dtype": r["dtype"], "tensor": r["tensor"],
        "revision": r.get("revision"), "tied": r.get("tied"), "bytes_read": r["bytes_read"],
        "remote": r.get("remote", False),
    })
    if r.get("halo") is not None or r.get("note"):
        entry["halo"] = r.get("halo")
    if r.get("note"):
        entry["note"] = r["note"]
    return entry


def _segments(good: list[dict]) -> list[list[dict]]:
    """Runs of consecutive checkpoints with one vocabulary size (a resize starts a new run)."""
    out = [[good[0]]]
    for r in good[1:]:
        if r["vocab"] == out[-1][-1]["vocab"]:
            out[-1].append(r)
        else:
            out.append([r])
    return out


def _group_ids(r: dict) -> np.ndarray:
    ids = np.arange(r["vocab"], dtype=np.int32)
    for h in r["holes"]:
        ids[h] = h[0]
    return ids


def _segment_census(seg: list[dict], before: dict | None, digests: dict[str, np.ndarray]):
    """The lifecycle census of one run of equal vocabulary: partitions from the holes, motion
    from the digests (the first checkpoint against the one before a resize, when there is one)."""
    from blackholes.analysis.lifecycle import census_of_partitions

    V = seg[0]["vocab"]
    group_ids = np.stack([_group_ids(r) for r in seg])
    changed = np.zeros((len(seg), V), bool)
    prev = digests[seg[0]["key"]]
    if before is not None:
        old = digests[before["key"]]
        n = min(V, len(old))
        changed[0, :n] = (prev[:n] != old[:n]).any(axis=1)
        changed[0, n:] = True  # tokens the resize added
    for i, r in enumerate(seg[1:], start=1):
        cur = digests[r["key"]]
        changed[i] = (cur != prev).any(axis=1)
        prev = cur
    steps = [r["step"] for r in seg]
    return census_of_partitions(group_ids, changed, steps, shape=(len(seg), V, seg[0]["dim"]),
                                dtype=seg[-1]["dtype"])


def _census_event(e, seg: list[dict], matrix: str) -> dict:
    d = e.to_json()
    for k in ("never_seen", "record"):  # a recording's words; a checkpoint is named by its label
        d.pop(k, None)
    d.update(label=seg[e.record]["label"], previous_label=seg[e.record - 1]["label"], matrix=matrix)
    return d


def _resize_event(a: dict, b: dict) -> dict:
    return {"kind": "resize", "step": b["step"], "label": b["label"], "previous_label": a["label"],
            "matrix": a["matrix"], "vocab_before": a["vocab"], "vocab_after": b["vocab"],
            "added": list(range(a["vocab"], b["vocab"])) if b["vocab"] > a["vocab"] else [],
            "removed": list(range(b["vocab"], a["vocab"])) if a["vocab"] > b["vocab"] else []}


def _dead_set_events(good: list[dict]) -> list[dict]:
    """Tokens that join or leave the dead set (the tokens in holes) between consecutive checkpoints."""
    out = []
    for a, b in zip(good, good[1:]):
        da = {t for h in a["holes"] for t in h}
        db = {t for h in b["holes"] for t in h}
        for kind, tokens in (("joined", db - da), ("left", da - db)):
            if tokens:
                out.append({"kind": kind, "step": b["step"], "label": b["label"], "previous_label": a["label"],
                            "matrix": a["matrix"], "tokens": sorted(tokens)})
    return out


def _section(good: list[dict], segments, censuses, canon: dict[tuple, int]) -> dict:
    """Per matrix: canonical holes, lineages, last motion, freezes, when the holes formed."""
    steps = [r["step"] for r in good]
    appearances: dict[tuple, list[int]] = {}
    for r in good:
        for h in r["holes"]:
            appearances.setdefault(tuple(h), []).append(r["step"])
    holes = [{"id": i, "size": len(m), "members": list(m), "first_seen": appearances[m][0],
              "last_seen": appearances[m][-1], "checkpoints": len(appearances[m])}
             for m, i in sorted(canon.items(), key=lambda kv: kv[1])]
    last = censuses[-1] if censuses and len(segments[-1]) >= 2 else None
    motion = _last_motion(good, segments, censuses)
    first_hole = next((r["step"] for r in good if r["holes"]), None)
    return {
        "steps": steps, "holes": holes,
        "lineages": [h.to_json() for c in censuses for h in c.lineages],
        "last_motion": motion,
        "frozen_from": {"matrix": last.frozen_from["matrix"] if last else None,
                        "dead_set": last.frozen_from["holes"] if last else None},
        "first_hole_at": first_hole,
        "resizes": len(segments) - 1,
        "partition_changes": [s for c in censuses for s in c.partition_changes],
    }


def _last_motion(good: list[dict], segments, censuses) -> list[int | None]:
    """Per token of the last vocabulary: the last step its row changed (None: never in the series).

    Taken from the newest run of checkpoints whose census saw the token move."""
    V = good[-1]["vocab"]
    motion: list[int | None] = [None] * V
    runs = [seg for seg in segments if len(seg) >= 2]
    for seg, c in zip(reversed(runs), reversed(censuses)):
        for t, s in enumerate(c.last_motion[:V]):
            if motion[t] is None and s is not None:
                motion[t] = s
    return motion


# ---------------------------------------------------------------------------- the pipeline


def history(sources, *, out: str | os.PathLike | None = None, revisions: str | None = None,
            matrix: str | None = None, near: int | None = None, workers: int | None = None,
            scheduler=None, redo: bool = False, json_path: str | os.PathLike | None = None,
            progress: str | None = None, log=None) -> HistoryResult:
    """The history of the holes across an ordered series of checkpoints (see the module doc).

    ``sources``: as :func:`~blackholes.sources.series.expand_series` takes them (with
    ``revisions``); ``matrix``: "input", "output" or "both" (default: scan's choice); ``near=K``
    adds each checkpoint's halo; ``out``: the folder of rows, digests, JSON, page and plots (a
    re-run resumes; ``redo`` reads everything again); ``json_path``: history.json also there.
    ``workers`` / ``scheduler``: where the checkpoints are read (the shared runner: ``workers=1``
    here, else a local process pool, or a Dask cluster: an address or an open ``distributed.Client``); ``progress``: a bar's unit (None: none);
    ``log`` hears one line per checkpoint that could not be read.

    >>> r = blackholes.history(["runs/checkpoints"], out="history")      # doctest: +SKIP
    >>> r.matrices["output"]["frozen_from"]["dead_set"]                  # doctest: +SKIP
    """
    t0 = time.perf_counter()
    if matrix not in (None, "input", "output", "both"):
        raise BlackholesError(f"matrix must be 'input', 'output' or 'both', not {matrix!r}")
    checkpoints = expand_series(sources, revisions=revisions)
    if len(checkpoints) < 2:
        raise BlackholesError(f"a history needs at least 2 checkpoints; {checkpoints[0].label} is the only one "
                              "(name a folder of checkpoint-N folders, several sources, or --revisions)")
    if near is not None:
        from blackholes.analysis.near import check_k

        near = check_k(near)
    kinds = ["input", "output"] if matrix == "both" else [matrix]
    tasks = [HistoryTask(cp, m, near) for m in kinds for cp in checkpoints]
    store = HistoryStore(out) if out is not None else None
    if store is not None:
        store.open()
    _check_outputs(out, json_path, _local_inputs(checkpoints))
    known = {} if store is None or redo else store.rows()
    rows: dict[str, dict] = {}
    digests: dict[str, np.ndarray] = {}
    for t in tasks:
        kept = store.digests(known[t.key]) if t.key in known else None
        if kept is not None:
            rows[t.key], digests[t.key] = known[t.key], kept
    todo = [t for t in tasks if t.key not in rows]

    def handle(task: HistoryTask, summary: dict | None, error: str | None) -> None:
        row = _row(task, summary, error)
        if store is not None:
            store.append(row, None if summary is None else summary["digests"])
        rows[task.key] = row
        if summary is not None:
            digests[task.key] = summary["digests"]
        if error is not None and log is not None:
            log(f"{task.checkpoint.label}: {error}")

    run_checkpoints(todo, handle, workers=workers, scheduler=scheduler, progress=progress)
    ordered = [rows[t.key] for t in tasks]
    entries, events, sections, censuses = analyse(ordered, digests)
    result = HistoryResult(
        checkpoints=entries, events=events, matrices=sections, sources=[os.fspath(s) for s in sources],
        revisions=revisions, near=near, bytes_read=sum(rows[t.key].get("bytes_read") or 0 for t in todo),
        read=len(todo), out=Path(out) if out is not None else None, censuses=censuses,
    )
    result.seconds = time.perf_counter() - t0
    _check_outputs(out, json_path, [f for r in ordered for f in r.get("files") or []])
    _write(result, out, json_path)
    return result


def _local_inputs(checkpoints: list[Checkpoint]) -> list[Path]:
    """The local files the checkpoints name (a folder: the files in it), before anything is read."""
    found: list[Path] = []
    for c in checkpoints:
        p = Path(c.source).expanduser()
        if "://" in c.source or not p.exists():
            continue
        found += [q for q in p.iterdir() if q.is_file()] if p.is_dir() else [p]
    return found


def _check_outputs(out, json_path, inputs) -> None:
    """No output names an input, or another output (checked before reading, and again before writing
    against every file the checkpoints were read from)."""
    from blackholes.io.paths import check_outputs

    names = ["history.json", "history.md", "history.html", "history.jsonl"] if out is not None else []
    check_outputs([*(Path(out) / n for n in names), json_path], inputs=inputs)


def _write(result: HistoryResult, out, json_path) -> None:
    from blackholes.io.atomic import write_json

    if json_path is not None:
        write_json(json_path, result.to_json())
    if out is None:
        return
    from blackholes.render.history import write_history

    write_history(result, Path(out))
