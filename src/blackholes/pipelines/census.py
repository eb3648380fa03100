"""``census``: scan many models at once — locally on a process pool, or on a Dask cluster.

The unit of work is one model matrix: :func:`scan_one` takes a :class:`Task` (a source
as ``scan`` accepts it, which matrix, the scan options), loads it with ``load_matrix``,
runs ``scan`` and returns an :class:`Outcome` — one flat row for ``census.jsonl`` plus
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

A worker that dies mid-model has its task moved to another worker by Dask; after the
scheduler's ``distributed.scheduler.allowed-failures`` deaths (default 3) the model is an
error row. The local pool does the same (``retries``), running such a model alone.
"""

from __future__ import annotations

import dataclasses

import hashlib
import json
import os
import re
import socket
import time
from collections import deque
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from blackholes.errors import BlackholesError

MATRIX_CHOICES = ("input", "output", "both")
DEFAULT_RETRIES = 2  # local pool: a model whose worker process dies this many times more is an error row
MEMORY_SHARE = 0.8  # of the RAM available at start, for the models scanned at the same time
ERROR_CHARS = 300


# ---------------------------------------------------------------------------- tasks and results


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
class Outcome:
    """What one task sends back: its row, the full scan JSON, the ScanResult when masks are wanted."""

    row: dict
    doc: dict | None = None
    result: object | None = None  # blackholes.analysis.groups.ScanResult


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
    retried: int = 0  # local pool: models started again after their worker process died

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


# ---------------------------------------------------------------------------- sources


def expand_sources(sources=(), *, from_file=None, hf_cache: bool = False, ollama: bool = False) -> list[str]:
    """Every source named: given ones, then ``from_file``'s lines, the HF cache's and Ollama's
    models; duplicates dropped, order kept.

    >>> expand_sources(["a.safetensors", "org/x", "a.safetensors"])
    ['a.safetensors', 'org/x']
    """
    names = [os.fspath(s) for s in sources]
    if from_file is not None:
        names += read_source_list(from_file)
    if hf_cache:
        names += hf_cache_sources()
    if ollama:
        names += ollama_sources()
    return list(dict.fromkeys(n for n in names if n))


def read_source_list(path) -> list[str]:
    """One source a line; blank lines and ``#`` comments (whole-line, or after a space) skipped."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise BlackholesError(f"cannot read the source list {path}: {getattr(e, 'strerror', None) or e}") from None
    out = []
    for line in text.splitlines():
        line = re.sub(r"(^|\s)#.*$", "", line).strip()
        if line:
            out.append(line)
    return out


def hf_cache_sources() -> list[str]:
    """Every model in the local Hugging Face cache: ``org/name`` where it has a ``main`` ref,
    else ``org/name@<newest cached commit>``. Nothing is downloaded."""
    from huggingface_hub import scan_cache_dir

    from blackholes.sources.hf_cache import hf_cache_dir

    cache = hf_cache_dir()
    if not cache.is_dir():
        raise BlackholesError(f"no Hugging Face cache at {cache} (set HF_HUB_CACHE or HF_HOME)")
    try:
        info = scan_cache_dir(cache)
    except Exception as e:  # CacheNotFound, or a cache it cannot parse
        raise BlackholesError(f"cannot list the Hugging Face cache {cache}: {e}") from None
    out = []
    for repo in sorted(info.repos, key=lambda r: r.repo_id):
        if repo.repo_type != "model" or not repo.revisions:
            continue
        if any("main" in rev.refs for rev in repo.revisions):
            out.append(repo.repo_id)
        else:
            newest = max(repo.revisions, key=lambda rev: (rev.last_modified, rev.commit_hash))
            out.append(f"{repo.repo_id}@{newest.commit_hash}")
    return out


def ollama_sources() -> list[str]:
    """Every model in the local Ollama store, as ``ollama:NAME:TAG``."""
    try:
        from blackholes.sources.ollama import list_ollama_models
    except ImportError:
        raise BlackholesError("--ollama needs blackholes.sources.ollama, which this version lacks") from None
    return [n if n.startswith("ollama:") else f"ollama:{n}" for n in list_ollama_models()]


def resolve_revision(source: str) -> str | None:
    """What version of ``source`` a row describes, found cheaply (no tensor read, no network):
    a cached model's snapshot commit, or for a local file or folder ``local:<digest>`` of its
    files' names, sizes and modification times. ``None`` when it cannot be told here.

    >>> resolve_revision("https://example.com/model.safetensors") is None
    True
    """
    if "://" in source:
        return None
    path = Path(source).expanduser()
    try:
        if path.exists():
            return _local_stamp(path)
        from blackholes.sources.hf_cache import cached_snapshot, looks_like_model_id

        if looks_like_model_id(source):
            return cached_snapshot(source).name
    except (BlackholesError, OSError):
        pass
    return None


def _local_stamp(path: Path) -> str:
    files = [path] if path.is_file() else sorted(
        p for p in path.iterdir() if p.is_file() and p.suffix in (".safetensors", ".json", ".gguf", ".model")
    )
    stamp = hashlib.sha256()
    for p in files:
        st = p.stat()
        stamp.update(f"{p.name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode("utf-8", "surrogateescape"))
    return "local:" + stamp.hexdigest()[:16]


# ---------------------------------------------------------------------------- the unit of work


def scan_one(task: Task) -> Outcome:
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
        tied = _tied(task, m)
        result = scan(m, threads=task.threads, **dict(task.options))
        doc = result.to_json()
        row = build_row(task, m, result, doc, tied)
        outcome = Outcome(row, doc, result if task.masks else None)
    except Exception as e:  # a failing model is a row, never the end of the census
        outcome = Outcome(error_row(task, one_line(e)))
    outcome.row["seconds"] = time.perf_counter() - t0
    outcome.row["started"] = started
    outcome.row["worker"] = f"{socket.gethostname()}:{os.getpid()}"
    return outcome


def one_line(e: BaseException) -> str:
    """A one-line reason: a BlackholesError's own words, else the exception's type and first line."""
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    if not isinstance(e, BlackholesError):
        text = f"{type(e).__name__}: {text}" if text else type(e).__name__
    return text if len(text) <= ERROR_CHARS else text[: ERROR_CHARS - 1] + "…"


def _tied(task: Task, m) -> bool | None:
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


def _matrix_label(task: Task, m, tied: bool | None) -> str | None:
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
    row = _blank_row(task)
    row.update(
        matrix=_matrix_label(task, m, tied),
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


def _blank_row(task: Task) -> dict:
    row = dict.fromkeys(ROW_COLUMNS)
    row.update(source=task.source, request=task.request, options=dict(task.options))
    return row


def error_row(task: Task, reason: str) -> dict:
    """The row of a model that could not be scanned: its identity, the reason, nulls elsewhere.

    >>> error_row(Task("x.safetensors"), "no such file")["error"]
    'no such file'
    """
    row = _blank_row(task)
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


# ---------------------------------------------------------------------------- the output folder


class CensusStore:
    """A census folder: checked before anything is written, then appended to row by row.

    >>> store = CensusStore("census")          # doctest: +SKIP
    >>> store.append({"source": "org/model", ...})  # doctest: +SKIP
    """

    FILES = {"census.jsonl", "census.md", "census.html"}
    FOLDERS = {"models": (".json", ".safetensors"), "plots": (".png",)}

    def __init__(self, out):
        self.out = Path(out)
        self.jsonl = self.out / "census.jsonl"
        self.models = self.out / "models"
        check_census_dir(self.out)

    def open(self) -> None:
        """Create the folders, and drop a half-written last line (a crash mid-append) from census.jsonl."""
        self.models.mkdir(parents=True, exist_ok=True)
        if self.jsonl.is_file():
            data = self.jsonl.read_bytes()
            if data and not data.endswith(b"\n"):
                with open(self.jsonl, "r+b") as f:
                    f.truncate(data.rfind(b"\n") + 1)

    def rows(self) -> list[dict]:
        return read_rows(self.jsonl) if self.jsonl.is_file() else []

    def append(self, row: dict) -> None:
        """One JSON line, flushed and fsynced: a crash after this returns loses nothing."""
        line = json.dumps(row, allow_nan=False, default=_json_default) + "\n"
        with open(self.jsonl, "a", encoding="utf-8") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())

    def write_model(self, task: Task, outcome: Outcome) -> None:
        """The model's scan JSON (and mask) into models/, atomically; their paths go into the row."""
        from blackholes.io.atomic import write_json

        if outcome.doc is None:
            return
        name = task.name
        write_json(self.models / f"{name}.json", outcome.doc)
        outcome.row["scan_json"] = f"models/{name}.json"
        if outcome.result is not None:
            outcome.result.save_mask(self.models / f"{name}.mask.safetensors")
            outcome.row["mask"] = f"models/{name}.mask.safetensors"


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def check_census_dir(out: Path) -> None:
    """Refuse, touching nothing, an ``out`` that holds anything but a census's files."""
    if not out.exists():
        return
    if not out.is_dir():
        raise BlackholesError(f"--out must be a folder, but {out} is a file")
    for entry in sorted(out.iterdir()):
        if _is_leftover(entry) or (entry.name in CensusStore.FILES and entry.is_file()):
            continue
        allowed = CensusStore.FOLDERS.get(entry.name)
        if allowed is not None and entry.is_dir():
            stray = [p for p in entry.iterdir() if not (_is_leftover(p) or (p.is_file() and p.name.endswith(allowed)))]
            if not stray:
                continue
            entry = stray[0]
        raise BlackholesError(
            f"{out} holds something that is not part of a census ({entry}); choose an empty folder or a census's"
        )
    jsonl = out / "census.jsonl"
    if jsonl.is_file():
        read_rows(jsonl)  # raises when it is not a census's


def _is_leftover(path: Path) -> bool:
    """A temporary file an interrupted atomic write left behind (``.name.xxxx.tmp``)."""
    return path.is_file() and path.name.startswith(".") and path.name.endswith(".tmp")


def read_rows(path: Path) -> list[dict]:
    """Every row of a census.jsonl; a last line without its newline (a crash mid-append) is ignored."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise BlackholesError(f"cannot read {path}: {getattr(e, 'strerror', None) or e}") from None
    lines = text.split("\n")
    rows = []
    for number, line in enumerate(lines[:-1], start=1):  # the part after the last newline is unfinished
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            row = None
        if not (isinstance(row, dict) and isinstance(row.get("source"), str) and "options" in row):
            raise BlackholesError(f"{path} is not a census (line {number} is not a census row); choose another --out")
        rows.append(row)
    return rows


def row_key(row: dict) -> tuple:
    return (row["source"], row.get("request") or "default", json.dumps(row.get("options") or {}, sort_keys=True))


def latest_rows(rows: list[dict]) -> dict[tuple, dict]:
    """The newest row of every (source, request, options): later lines replace earlier ones."""
    return {row_key(row): row for row in rows}


# ---------------------------------------------------------------------------- planning


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


# ---------------------------------------------------------------------------- the local pool


def available_memory() -> int:
    """Bytes of RAM available now (``MemAvailable``), or free pages when /proc is not there."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return 1 << 62  # unknown: do not hold models back


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


def admit(est: int, in_flight: list[int], budget: int) -> bool:
    """Whether a model needing ``est`` bytes may start beside those in flight: always when alone.

    >>> admit(6, [5], budget=10), admit(6, [], budget=10), admit(20, [], budget=10)
    (False, True, True)
    """
    return not in_flight or sum(in_flight) + est <= budget


def _pool_context():
    """fork when it is safe (Linux, a single-threaded driver): workers start in milliseconds
    with the scan path already imported; otherwise forkserver."""
    import multiprocessing as mp
    import sys
    import threading

    if sys.platform == "linux" and threading.active_count() == 1:
        return mp.get_context("fork")
    return mp.get_context("forkserver" if sys.platform != "win32" else "spawn")


def _worker_init(environ: dict, cwd: str) -> None:
    """A pool process starts where the driver is now: its environment (HF_HUB_CACHE, OLLAMA_MODELS,
    ...) and working directory — a forkserver's children would otherwise inherit the server's,
    frozen when it first started. Ctrl-C is the driver's to handle: it stops the pool."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.environ.clear()
    os.environ.update(environ)
    os.chdir(cwd)


class LocalRunner:
    """Tasks on a process pool sized to the cores, admitted by memory; a worker process that dies
    (out of memory, killed) has its model retried, alone, up to ``retries`` times."""

    def __init__(self, workers: int | None = None, *, memory_budget: int | None = None,
                 retries: int = DEFAULT_RETRIES):
        self.workers = max(1, workers or os.cpu_count() or 1)
        self.budget = memory_budget if memory_budget is not None else int(available_memory() * MEMORY_SHARE)
        self.retries = retries
        self.retried = 0

    def run(self, tasks: list[Task], handle) -> None:
        """Run ``tasks``; ``handle(task, outcome)`` is called in the driver as each finishes and
        returns further tasks to run."""
        from concurrent.futures import FIRST_COMPLETED, wait

        sized = sorted(((t, estimate_bytes(t)) for t in tasks), key=lambda te: -te[1])  # largest first
        queue = deque(sized)
        self._crashes: dict[Task, int] = {}
        self._suspects: set[Task] = set()
        running: dict = {}
        pool = None
        try:
            while queue or running:
                pool = pool or self._pool(len(queue))
                self._fill(pool, queue, running)
                done, _ = wait(list(running), return_when=FIRST_COMPLETED)
                if self._collect(done, running, queue, handle):
                    wait(list(running))  # a broken pool fails every task in it: gather them all
                    self._collect(list(running), running, queue, handle, broken_with=True)
                    pool.shutdown(wait=True)
                    pool = None
        except BaseException:
            if pool is not None:
                _stop_pool(pool)
            raise
        if pool is not None:
            pool.shutdown(wait=True)

    def _pool(self, tasks: int):
        from concurrent.futures import ProcessPoolExecutor

        return ProcessPoolExecutor(min(self.workers, max(1, tasks)), mp_context=_pool_context(),
                                   initializer=_worker_init, initargs=(dict(os.environ), os.getcwd()))

    def _fill(self, pool, queue: deque, running: dict) -> None:
        """Submit queued tasks while the memory budget allows, up to one more per worker than the
        workers (so a worker that finishes starts its next model at once, while the driver writes
        the last one's files); a task whose worker died before runs alone, so a repeated death
        points at the model itself. Submitted counts as running for the budget."""
        while queue and len(running) < 2 * self.workers:
            if any(t in self._suspects for t, _ in running.values()):
                return
            pick = next((i for i, (t, est) in enumerate(queue)
                         if (not running or t not in self._suspects)
                         and admit(est, [e for _, e in running.values()], self.budget)), None)
            if pick is None:
                return
            task, est = queue[pick]
            del queue[pick]
            if self.workers > 1:  # the workers share the cores: one hashing thread each
                task = dataclasses.replace(task, threads=1)
            running[pool.submit(scan_one, task)] = (task, est)

    def _collect(self, done, running: dict, queue: deque, handle, broken_with: bool = False) -> bool:
        """Hand finished outcomes on; requeue (or fail) tasks whose worker died. True if the pool broke."""
        from concurrent.futures.process import BrokenProcessPool

        broken = []
        alone = len(running) == 1 and not broken_with
        for fut in [f for f in running if f in done]:  # in submission order: a set has none
            task, est = running.pop(fut)
            try:
                outcome = fut.result()
            except BrokenProcessPool:
                broken.append((task, est))
                continue
            queue.extend((t, estimate_bytes(t)) for t in handle(task, outcome))
        for task, est in broken:
            if alone:  # it was the only one running: its own death, counted
                self._crashes[task] = self._crashes.get(task, 0) + 1
            if self._crashes.get(task, 0) > self.retries:
                reason = (f"the worker process died {self._crashes[task]} times while scanning it "
                          f"(out of memory, or killed)")
                queue.extend((t, estimate_bytes(t)) for t in handle(task, Outcome(error_row(task, reason))))
            else:
                self._suspects.add(task)
                queue.appendleft((task, est))
                self.retried += 1
        return bool(broken)


def _stop_pool(pool) -> None:
    """Stop a pool now: queued tasks cancelled, running worker processes terminated."""
    terminate = getattr(pool, "terminate_workers", None)  # Python >= 3.14
    if terminate is not None:
        terminate()
        return
    for process in list((getattr(pool, "_processes", None) or {}).values()):
        process.terminate()
    pool.shutdown(wait=True, cancel_futures=True)


# ---------------------------------------------------------------------------- Dask


def connect(scheduler, timeout: float = 10.0):
    """A ``distributed.Client`` for ``scheduler`` (an address or a Client), and whether we own it.

    One clear line when Dask is not installed or the scheduler cannot be reached.
    """
    try:
        from distributed import Client
    except ImportError:
        raise BlackholesError('--scheduler needs Dask: pip install "blackholes[cluster]"') from None
    if isinstance(scheduler, Client):
        return scheduler, False
    try:
        return Client(scheduler, timeout=timeout, set_as_default=False), True
    except (OSError, TimeoutError, ValueError) as e:
        raise BlackholesError(
            f"cannot reach the Dask scheduler at {scheduler} ({one_line(e)}); start one with `dask scheduler` "
            f"and workers with `dask worker {scheduler}`"
        ) from None


class DaskRunner:
    """The same tasks on a Dask cluster: workers read their own models and send back rows;
    a worker that dies mid-model has its task rescheduled by Dask (the scheduler's
    ``distributed.scheduler.allowed-failures`` times) and then the model is an error row."""

    def __init__(self, client):
        self.client = client
        self.run_id = hashlib.sha256(f"{time.time_ns()}:{os.getpid()}".encode()).hexdigest()[:8]

    def run(self, tasks: list[Task], handle) -> None:
        from distributed import as_completed

        futures = {self._submit(t): t for t in tasks}
        stream = as_completed(list(futures))
        try:
            for fut in stream:
                task = futures.pop(fut)
                for t in handle(task, self._outcome(fut, task)):
                    new = self._submit(t)
                    futures[new] = t
                    stream.add(new)
                fut.release()
        finally:
            if futures:  # interrupted: nothing left running on the cluster for us
                self.client.cancel(list(futures))

    def _submit(self, task: Task):
        return self.client.submit(scan_one, task, key=f"census-{self.run_id}-{task.name}", pure=False)

    @staticmethod
    def _outcome(fut, task: Task) -> Outcome:
        try:
            return fut.result()
        except Exception as e:  # KilledWorker after the allowed worker deaths, a lost future, ...
            return Outcome(error_row(task, dask_failure(e)))


def dask_failure(e: BaseException) -> str:
    """The error row's reason for a task the cluster could not finish."""
    if type(e).__name__ == "KilledWorker":
        return f"every Dask worker that ran it died (KilledWorker, after the scheduler's allowed failures): {e}"
    return f"the Dask cluster could not run it: {one_line(e)}"


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


def census(
    sources=(),
    *,
    out: str | os.PathLike | None = None,
    from_file=None,
    hf_cache: bool = False,
    ollama: bool = False,
    matrix: str = "both",
    near=None,
    indicators: bool = False,
    masks: bool = False,
    workers: int | None = None,
    scheduler=None,
    redo: bool = False,
    retries: int = DEFAULT_RETRIES,
    memory_budget: int | None = None,
    summary: bool = True,
    log=None,
    connect_timeout: float = 10.0,
) -> CensusResult:
    """Scan every source (anything ``scan`` accepts) and return one row per model matrix.

    ``out``: the census folder (rows appended to ``census.jsonl`` as they finish, scan JSONs
    in ``models/``, ``census.md``/``census.html``); ``None`` keeps everything in memory.
    ``matrix``: "input", "output" or "both" (the output matrix, and the input embedding too
    where untied). ``near``/``indicators``: scan's analysis options. ``scheduler``: a Dask
    scheduler address or an open ``distributed.Client``; ``None`` uses
    ``$DASK_SCHEDULER_ADDRESS``, else a Client already open in this process, else a local
    process pool; ``"local"`` (or giving ``workers``, its size; default: the cores) forces the pool.
    ``log`` gets one line per finished model.

    >>> r = census(["org/model", "./other"], out="census", workers=2)   # doctest: +SKIP
    >>> r.rows[0]["black_hole_tokens"], r.to_pandas()                   # doctest: +SKIP
    """
    t0 = time.perf_counter()
    names = expand_sources(sources, from_file=from_file, hf_cache=hf_cache, ollama=ollama)
    if not names:
        raise BlackholesError("no models to survey: name SOURCEs, or use --from-file, --hf-cache or --ollama")
    tasks = plan(names, matrix=matrix, options=scan_options(near, indicators), masks=masks and out is not None)
    store = CensusStore(out) if out is not None else None  # checked before any work; nothing written yet
    client, owned = _dask_client(scheduler, connect_timeout, workers)
    try:
        if store is not None:
            store.open()
        result = _run(tasks, store, client, redo=redo, log=log,
                      local=dict(workers=workers, memory_budget=memory_budget, retries=retries))
    finally:
        if owned:
            client.close()
    result.seconds = time.perf_counter() - t0
    if store is not None and summary and not result.interrupted:
        from blackholes.render.census import write_summary

        result.summary = write_summary(store.out, list(latest_rows(store.rows()).values()))
    return result


def _dask_client(scheduler, timeout: float, workers):
    """(client, owned) for the Dask path, or (None, False) for the local pool."""
    if isinstance(scheduler, str) and scheduler == "local":
        return None, False
    if scheduler is None:  # an explicit local pool size means the local pool
        scheduler = None if workers is not None else os.environ.get("DASK_SCHEDULER_ADDRESS") or _open_client()
    if scheduler is None:
        return None, False
    if workers is not None:
        raise BlackholesError("--workers sizes the local pool; on a Dask cluster its workers run the models")
    return connect(scheduler, timeout)


def _open_client():
    """A ``distributed.Client`` already open in this process (a notebook's), if Dask is loaded at all."""
    import sys

    if "distributed" not in sys.modules:
        return None
    from distributed import default_client

    try:
        return default_client()
    except ValueError:  # no client open
        return None


def _run(tasks: list[Task], store, client, *, redo: bool, log, local: dict) -> CensusResult:
    """Skip what the folder already has, run the rest, append each row as it arrives."""
    book = _Book(store, redo, CensusResult(rows=[], out=store.out if store is not None else None))
    todo = book.still_to_do(tasks)
    book.progress = Progress(len(todo), log)
    if log is not None:
        where = "a Dask cluster" if client is not None else f"{local.get('workers') or os.cpu_count()} local processes"
        done = f", {book.result.skipped:,} already done in {store.out}" if book.result.skipped else ""
        log(f"census: {len(todo):,} model matrices to scan on {where}{done}")
    runner = DaskRunner(client) if client is not None else LocalRunner(**local)
    try:
        if todo:
            runner.run(todo, book.handle)
    except KeyboardInterrupt:
        book.result.interrupted = True
    book.result.retried = getattr(runner, "retried", 0)
    order = {t.source: i for i, t in enumerate(tasks)}
    rows = book.rows.values()
    book.result.rows = sorted(rows, key=lambda r: (order.get(r["source"], 0), r.get("request") != "default"))
    return book.result


class _Book:
    """The driver's bookkeeping: rows found in the folder, rows arriving, counts, progress."""

    def __init__(self, store, redo: bool, result: CensusResult):
        self.store, self.redo, self.result = store, redo, result
        self.previous = latest_rows(store.rows()) if store is not None else {}
        self.rows: dict[tuple, dict] = {}  # task key -> its row, for this census's result
        self.progress: Progress | None = None

    def still_to_do(self, candidates: list[Task]) -> list[Task]:
        """The tasks without a finished row; a finished row stands in for its task (resume),
        and may lead to a follow-up (the input matrix of an untied model)."""
        todo, pending = [], deque(candidates)
        while pending:
            task = pending.popleft()
            old = None if self.redo else self.previous.get(task.key)
            if _finished(old, task):
                self.rows[task.key] = old
                self.result.skipped += 1
                pending.extend(follow_ups(task, old))
            else:
                todo.append(task)
        return todo

    def handle(self, task: Task, outcome: Outcome) -> list[Task]:
        """A finished task: files and row written first, then counted; returns its follow-ups."""
        row = outcome.row
        if self.store is not None:
            self.store.write_model(task, outcome)
            self.store.append(row)
        self.rows[task.key] = row
        self.result.scanned += 1
        self.result.failed += row.get("error") is not None
        self.result.bytes_read += row.get("bytes_read") or 0
        more = self.still_to_do(follow_ups(task, row))
        self.progress.finished(row, more=len(more))
        return more


def _finished(row: dict | None, task: Task) -> bool:
    """Whether ``row`` already answers ``task``: scanned without error, at the same revision,
    with its mask when masks are asked for."""
    if row is None or row.get("error") is not None or (task.masks and not row.get("mask")):
        return False
    return _same_revision(task, row)


def _same_revision(task: Task, row: dict) -> bool:
    """A row still describes the source when the revision we can resolve here matches its own
    (a source whose revision cannot be told here without reading it counts as unchanged)."""
    now = resolve_revision(task.source)
    return now is None or now == row.get("revision")
