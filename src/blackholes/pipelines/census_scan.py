"""The census's unit of work: scan one model matrix and make its row.

:func:`scan_one` takes a :class:`Task` (a source as ``scan`` accepts it, which matrix, the
scan options), loads it with ``load_matrix``, runs ``scan`` and returns a
:class:`ScanOutcome`: one flat row for ``census.jsonl`` plus the model's full scan JSON.
It runs in this process, a pool process or on a Dask worker, and imports only the scan
path (no torch, no matplotlib, no dask).

>>> Task("org/model", "input").name.startswith("org--model-")
True
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import time
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from typing import TYPE_CHECKING

import numpy as np

from blackholes.errors import BlackholesError
from blackholes.pipelines.runner import one_line
from blackholes.sources.listing import resolve_revision

if TYPE_CHECKING:
    from blackholes.analysis.groups import ScanResult

MATRIX_CHOICES = ("input", "output", "both")


@dataclass(frozen=True)
class Task:
    """One model matrix to scan: picklable, so it travels to a pool process or a Dask worker.

    >>> Task("org/model", "input").name.startswith("org--model-")
    True
    """

    source: str
    request: str = "default"  # "default" (scan's own pick: the output matrix), "input" or "output"
    options: tuple = ()  # sorted (name, value) pairs of scan options
    masks: bool = False  # also send back the ScanResult, for the mask file
    follow_up: bool = False  # --matrix both: after this task, scan the input matrix too when untied
    threads: int | None = None  # hashing threads of the scan (1 when several workers share the cores); not in the key

    @property
    def key(self) -> tuple:
        """What identifies this task's row across runs (with the resolved revision)."""
        return (self.source, self.request, json.dumps(dict(self.options), sort_keys=True))

    @property
    def name(self) -> str:
        """A file-safe, unique name: readable part of the source, a digest of the key, the request."""
        parts = [p for p in re.split(r"[/\\]+", self.source.split("://")[-1]) if p not in ("", ".", "..")]
        readable = re.sub(r"[^A-Za-z0-9._@-]+", "-", "--".join(parts[-2:])).strip("-.")[:80]
        digest = hashlib.sha256(repr(self.key).encode("utf-8")).hexdigest()[:8]
        return f"{readable or 'model'}-{digest}.{self.request}"


@dataclass
class ScanOutcome:
    """What one task sends back: its row, the full scan JSON, the ScanResult when masks are wanted."""

    row: dict
    doc: dict | None = None
    result: ScanResult | None = None
    reads: tuple[str, ...] = ()  # every file loading the model read: what the driver's files may not replace



def scan_one(task: Task) -> ScanOutcome:
    """Scan one model matrix and return its row; any failure becomes an error row, never an exception.

    Runs in a pool process or on a Dask worker (imports only the scan path: no torch,
    no matplotlib, no dask).

    >>> scan_one(Task("/no/such/model.safetensors")).row["error"]
    'no such file or directory: /no/such/model.safetensors'
    """
    started = datetime.now(timezone.utc).isoformat(timespec="milliseconds")
    t0 = time.perf_counter()
    try:
        from blackholes.analysis.groups import scan
        from blackholes.sources import load_matrix

        m = load_matrix(task.source, matrix=None if task.request == "default" else task.request)
        tied = tied_matrices(task, m)
        result = scan(m, threads=task.threads, **dict(task.options))
        doc = result.to_json()
        row = build_row(task, m, result, doc, tied)
        outcome = ScanOutcome(row, doc, result if task.masks else None, tuple(map(str, m.guarded_files())))
    except Exception as e:  # a failing model is a row, never the end of the census
        outcome = ScanOutcome(error_row(task, one_line(e)))
    outcome.row["seconds"] = time.perf_counter() - t0
    outcome.row["started"] = started
    outcome.row["worker"] = f"{socket.gethostname()}:{os.getpid()}"
    return outcome



def tied_matrices(task: Task, m) -> bool | None:
    """Whether the model's output matrix is its input embedding: the source's own answer when
    it has one, else whether input and output resolve to the same tensor (headers only; local
    files only, so a remote model never fetches a second tensor just to tell)."""
    if m.tied is not None:
        return bool(m.tied)
    if m.path is None or m.url is not None:
        return None
    from blackholes.sources import load_matrix

    here = m.matrix if m.matrix in ("input", "output") else task.request
    other = "output" if here == "input" else "input"
    try:
        o = load_matrix(task.source, matrix=other)
    except BlackholesError:
        return None
    return o.path == m.path and o.key == m.key


def matrix_label(task: Task, m, tied: bool | None) -> str | None:
    """"input" or "output": as asked, else the source's own pick; a tied model's one matrix is
    its output matrix (= its input embedding), as scan reports it."""
    if task.request != "default":
        return task.request
    if tied:
        return "output"
    if m.matrix in ("input", "output"):
        return m.matrix
    from blackholes.sources.names import INPUT_EMBEDDING_NAMES, OUTPUT_EMBEDDING_NAMES, find_named

    if find_named([m.key], OUTPUT_EMBEDDING_NAMES):
        return "output"
    return "input" if find_named([m.key], INPUT_EMBEDDING_NAMES) else None


def build_row(task: Task, m, result, doc: dict, tied: bool | None) -> dict:
    """The census row of one scanned matrix (``m``: the Matrix, ``result``: its ScanResult,
    ``doc``: ``result.to_json()``)."""
    sizes = [g.size for g in result.groups]
    rows = result.shape[0]
    vocab = result.vocab_size if result.vocab_size is not None else getattr(m.vocabulary, "size", None)
    row = blank_row(task)
    row.update(
        matrix=matrix_label(task, m, tied),
        revision=m.revision or resolve_revision(task.source),
        format=m.format,
        key=m.key,
        path=str(m.path) if m.path is not None else m.url,
        shape=list(result.shape),
        dtype=m.dtype,
        quantization=m.quantization,
        tied=tied,
        vocab_size=vocab,
        unique_vectors=result.unique_vectors,
        holes=len(sizes),
        black_hole_tokens=result.black_hole_tokens,
        black_hole_fraction=result.black_hole_tokens / rows if rows else 0.0,
        largest_hole=sizes[0] if sizes else 0,
        hole_sizes=sizes,
        bytes_read=int(m.bytes_read) if m.bytes_read is not None else int(m.array.nbytes),
    )
    row.update(analysis_columns(doc))
    row.update(hole_digests(result))
    return row


ROW_COLUMNS = (
    "source", "request", "matrix", "revision", "format", "key", "path", "shape", "dtype", "quantization", "tied",
    "vocab_size", "unique_vectors", "holes", "black_hole_tokens", "black_hole_fraction", "largest_hole",
    "hole_sizes", "halo_size", "near_clusters", "candidates", "categories", "scripts", "hole_vectors",
    "dead_tokens", "options", "seconds", "bytes_read", "started", "worker", "scan_json", "mask", "error",
)


def blank_row(task: Task) -> dict:
    row = dict.fromkeys(ROW_COLUMNS)
    row.update(source=task.source, request=task.request, options=dict(task.options))
    return row


def error_row(task: Task, reason: str) -> dict:
    """The row of a model that could not be scanned: its identity, the reason, nulls elsewhere.

    >>> error_row(Task("x.safetensors"), "no such file")["error"]
    'no such file'
    """
    row = blank_row(task)
    row.update(error=reason, revision=resolve_revision(task.source))
    return row


def analysis_columns(doc: dict) -> dict:
    """The row's columns that come from the scan JSON's optional sections, ``None`` when absent.

    The one place that maps those sections to columns — extend it when a section grows:

    - ``clusters`` (near duplicates, ``--near``): ``{"k", "grid", "clusters": [{"hole_ids": [...],
      "singletons": [...], ...}]}`` → ``near_clusters`` (how many), ``halo_size`` (non-hole members
      of the clusters that hold a hole); a top-level ``halo_size`` wins when scan reports one;
    - ``candidates`` (under-trained, ``--indicators``; or ``indicators["candidates"]``) → how many;
    - per-token ``category``/``script`` of hole members: in each group as ``category``/``script``
      (or ``categories``/``scripts``: a list parallel to ``token_ids``, or a ``{name: count}`` dict),
      or ``tokens`` as dicts with those fields → ``categories``/``scripts``: ``{name: count}`` over
      the black-hole tokens.

    >>> analysis_columns({"groups": [{"token_ids": [1, 2], "category": ["special", "ok"]}]})["categories"]
    {'ok': 1, 'special': 1}
    """
    out = {"halo_size": None, "near_clusters": None, "candidates": None, "categories": None, "scripts": None}
    clusters = doc.get("clusters")
    if isinstance(clusters, dict):
        clusters = clusters.get("clusters")
    if isinstance(clusters, list):
        out["near_clusters"] = len(clusters)
        out["halo_size"] = sum(_count(c.get("singletons")) for c in clusters
                               if isinstance(c, dict) and (c.get("hole_ids") or c.get("holes")))
    if isinstance(doc.get("halo_size"), int):
        out["halo_size"] = doc["halo_size"]
    candidates = doc.get("candidates")
    if candidates is None and isinstance(doc.get("indicators"), dict):
        candidates = doc["indicators"].get("candidates")
    if candidates is not None:
        out["candidates"] = _count(candidates)
    groups = [g for g in doc.get("groups") or [] if isinstance(g, dict)]
    for column, fieldname in (("categories", "category"), ("scripts", "script")):
        counts = _tally(groups, column, fieldname)
        out[column] = dict(sorted(counts.items())) if counts is not None else None
    return out


def _count(section) -> int:
    """How many entries a section holds: a list's length, a dict's ``count``/``ids``/``tokens``, an int."""
    if isinstance(section, bool) or section is None:
        return 0
    if isinstance(section, int):
        return section
    if isinstance(section, dict):
        for name in ("count", "n"):
            if isinstance(section.get(name), int):
                return section[name]
        for name in ("ids", "tokens", "token_ids", "members"):
            if isinstance(section.get(name), list):
                return len(section[name])
        return 0
    return len(section) if isinstance(section, (list, tuple)) else 0


def _tally(groups: list[dict], plural: str, singular: str) -> dict | None:
    """Counts of a per-token field over the hole members; ``None`` when no group carries it."""
    counts: dict[str, int] = {}
    seen = False
    for g in groups:
        values = g.get(plural, g.get(singular))
        tokens = g.get("tokens")
        if values is None and isinstance(tokens, list) and tokens and isinstance(tokens[0], dict):
            values = [t.get(singular) for t in tokens]
        if isinstance(values, dict):  # already a summary {name: count}
            seen = True
            for name, n in values.items():
                counts[str(name)] = counts.get(str(name), 0) + int(n)
        elif isinstance(values, list):
            seen = True
            for name in values:
                counts[str(name)] = counts.get(str(name), 0) + 1
    return counts if seen else None


def hole_digests(result) -> dict:
    """SHA-256 digests that let the summary match models exactly: of each hole's shared vector
    (its stored bytes, with dtype and width; largest hole first) and of the set of dead token ids.

    Two rows share a digest only if the bytes are identical (a SHA-256 collision aside);
    nothing here compares values as floats.
    """
    vectors = result.vectors if result.vectors is not None else np.zeros((0, 0), np.uint8)
    tag = f"{result.dtype}:{result.shape[1]}:".encode("ascii")
    holes = [hashlib.sha256(tag + np.ascontiguousarray(v).tobytes()).hexdigest()[:32] for v in vectors]
    dead = None
    if result.black_hole_tokens:
        ids = np.flatnonzero(result.mask).astype("<i8")
        dead = hashlib.sha256(ids.tobytes()).hexdigest()[:32]
    return {"hole_vectors": holes, "dead_tokens": dead}



def plan(sources: list[str], *, matrix: str, options: dict, masks: bool) -> list[Task]:
    """The first task of every source (``--matrix both`` adds the input matrix later, when untied).

    >>> [t.request for t in plan(["a", "b"], matrix="both", options={}, masks=False)]
    ['default', 'default']
    """
    if matrix not in MATRIX_CHOICES:
        raise BlackholesError(f"--matrix must be one of {', '.join(MATRIX_CHOICES)}, not {matrix!r}")
    request = "default" if matrix == "both" else matrix
    opts = tuple(sorted(options.items()))
    return [Task(s, request, opts, masks, follow_up=matrix == "both") for s in sources]


def follow_ups(task: Task, row: dict) -> list[Task]:
    """``--matrix both``: the input embedding too, once the first row says the model is untied."""
    if task.follow_up and row.get("error") is None and row.get("tied") is False:
        return [replace(task, request="input", follow_up=False)]
    return []


def scan_options(near=None, indicators: bool = False) -> dict:
    """The analysis options forwarded to ``scan``: only those that are set (they key the resume)."""
    options = {}
    if near is not None:
        options["near"] = near
    if indicators:
        options["indicators"] = True
    return options


def task_files(task: Task) -> list:
    """The files loading ``task``'s model reads (:meth:`blackholes.sources.matrix.Matrix.guarded_files`), from its headers only;
    remote sources are not opened (that would fetch the tensor) and a model that cannot be loaded
    here reads nothing: ``[]`` (its task reports why)."""
    if "://" in task.source:
        return []
    try:
        from blackholes.sources import load_matrix

        m = load_matrix(task.source, matrix=None if task.request == "default" else task.request)
    except Exception:  # the task itself will report it as an error row
        return []
    return m.guarded_files()


def estimate_bytes(task: Task) -> int:
    """Memory one scan of ``task`` needs: its tensor's bytes (header only) plus the hashes (~64 B a row).

    Remote sources are not opened here (that would fetch the tensor): 0.
    """
    if "://" in task.source:
        return 0
    try:
        from blackholes.sources import load_matrix

        m = load_matrix(task.source, matrix=None if task.request == "default" else task.request)
    except Exception:  # the task itself will report it as an error row
        return 0
    return int(m.array.nbytes) + 64 * int(m.array.shape[0])
