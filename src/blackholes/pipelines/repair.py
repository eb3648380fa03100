"""Repair dead rows: a copy of the model in which only the chosen embedding rows change.

The copy is made file by file, byte for byte; then exactly the repaired rows' bytes are
overwritten at their offsets (a row keeps its size, so no header, index or offset moves).
Headers are left untouched, safetensors ``__metadata__`` included: what was repaired and
how is recorded in ``repair.json`` (and ``repair.md``) beside the weights, and every byte
outside the repaired rows is the source's. The recipes, each computed in float64 over the
rows outside the set and written in the matrix's own dtype:

- ``mean``: their mean (Unsloth's ``fix_untrained_tokens``);
- ``mean-cov``: seeded samples of a normal with their mean and covariance (how transformers
  initialises new tokens, without its 1e-9 scale, which would round back to the mean in bf16);
- ``zero``.

Block-quantised GGUF rows are re-quantised to their own type with ``gguf.quants.quantize``;
a type gguf cannot write is refused before anything is written. BF16 values are rounded
float64 -> float32 -> bf16 (nearest even each time, as ``torch`` casts float32). A tied matrix
is repaired once. The copy is written into a temporary folder beside ``out`` and renamed at
the end; :mod:`blackholes.pipelines.repair_check` re-scans it and proves what changed.

>>> r = repair("model.safetensors", "fixed", tokens="holes")
>>> r.rows, [t.key for t in r.targets]
(12, ['model.embed_tokens.weight', 'lm_head.weight'])
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from blackholes.errors import BlackholesError
from blackholes.sources.matrix import Matrix, row_chunks

RECIPES = ("mean", "mean-cov", "zero")
MATRICES = ("input", "output", "both")
PLAIN = {"F32": np.float32, "F16": np.float16, "F64": np.float64, "BF16": None}  # BF16: rounded bits


@dataclass
class Target:
    """One matrix to repair: where its rows lie in which file."""

    which: str  # "input", "output", or "input+output" (tied: one matrix)
    matrix: Matrix  # the source's, memory-mapped
    file: Path  # the source file holding it
    offset: int  # absolute byte offset of row 0

    @property
    def key(self) -> str:
        return self.matrix.key

    @property
    def row_bytes(self) -> int:
        return int(self.matrix.array.shape[1] * self.matrix.array.itemsize)


@dataclass
class Plan:
    """A source as repair sees it: every file it reads, their names in the copy, the targets."""

    source: str
    kind: str  # "safetensors", "gguf" or "ollama"
    files: dict[Path, str]  # source file -> path relative to the output folder
    targets: list[Target] = field(default_factory=list)
    roots: list[Path] = field(default_factory=list)  # folders the source reads (the copy must not be inside)
    reads: list[Path] = field(default_factory=list)  # every file loading it read (Matrix.read_files)
    notes: list[str] = field(default_factory=list)  # e.g. why one of --matrix both's two is not repaired


@dataclass
class RepairResult:
    """What :func:`repair` wrote and what its checks found (``report`` is repair.json's content)."""

    out: Path
    targets: list[Target]
    token_ids: list[int]
    recipe: str
    report: dict

    @property
    def rows(self) -> int:
        return len(self.token_ids)

    def to_json(self) -> dict:
        return self.report


# ---------------------------------------------------------------------------- the source


def plan(source, matrix: str = "both") -> Plan:
    """Which files ``source`` reads and which matrices ``matrix`` names in it (tied: one).

    >>> [t.which for t in plan("model.safetensors").targets]
    ['input', 'output']
    >>> sorted(plan("org/tiny").files.values())          # a cached model: its snapshot folder, whole
    ['config.json', 'model.safetensors', 'tokenizer.json']
    >>> repair("org/tiny", "tiny-fixed", tokens="40-43").report["check"]["summary"]
    'the 4 repaired rows form one known group: the mean recipe writes one vector'
    """
    if matrix not in MATRICES:
        raise BlackholesError(f"--matrix must be one of {', '.join(MATRICES)}, not {matrix!r}")
    text = os.fspath(source)
    loaded, notes = _load_all(text, matrix)
    first = next(iter(loaded.values()))
    p = _files(text, first)
    p.notes += notes
    if len(loaded) == 2 and _tied(loaded["input"], loaded["output"]):
        loaded = {"input+output": loaded["input"]}
    for which, m in loaded.items():
        p.targets.append(_target(which, m))
        p.reads += [Path(f) for f in m.read_files()]
    rows = {t.matrix.shape[0] for t in p.targets}
    if len(rows) > 1:
        raise BlackholesError(f"the input and output matrices of {text} have different rows ({sorted(rows)}); "
                              "repair one with --matrix input or --matrix output")
    return p


def _load_all(text: str, matrix: str) -> tuple[dict[str, Matrix], list[str]]:
    """(the matrices ``matrix`` names, notes); for "both", those of the two the model has (a lone
    ``embeddings`` tensor is an input embedding and no output matrix), and why the other is not."""
    if matrix != "both":
        return {matrix: _load(text, matrix)}, []
    loaded, errors = {}, {}
    for which in ("input", "output"):
        try:
            loaded[which] = _load(text, which)
        except BlackholesError as e:
            errors[which] = e
    if not loaded:
        raise errors["input"]
    return loaded, [f"no {which} matrix repaired: {e}" for which, e in errors.items()]


def _load(text: str, which: str) -> Matrix:
    from blackholes.sources.load import load_matrix

    m = load_matrix(text, matrix=which)
    if m.path is None or m.url is not None:
        raise BlackholesError(f"repair needs a local model (files on this machine), not {text}")
    if m.key.startswith("embeddings["):
        raise BlackholesError(f"{text} is a training recording, not a model: nothing to repair")
    m.matrix = which
    return m


def _tied(m_in: Matrix, m_out: Matrix) -> bool:
    return bool(m_out.tied) or (m_in.key == m_out.key and Path(m_in.path) == Path(m_out.path))


def _target(which: str, m: Matrix) -> Target:
    if m.dtype not in PLAIN and m.quantization is None:
        raise BlackholesError(f"cannot repair {m.dtype} rows of {m.key!r}: only float and block-quantised rows")
    if m.quantization is not None:
        check_quantizer(m.quantization, m.shape[1])
    offset = getattr(m.array, "offset", None)
    if not isinstance(m.array, np.memmap) or offset is None:
        raise BlackholesError(f"{m.key!r} is not stored as plain rows in a file; cannot repair it in place")
    return Target(which=which, matrix=m, file=Path(m.path), offset=int(offset))


def check_quantizer(type_name: str, width: int) -> None:
    """Refuse, before anything is written, a block type gguf cannot write (Q4_K, IQ4_XS, ...)."""
    from gguf.constants import GGMLQuantizationType
    from gguf.quants import quantize

    try:
        quantize(np.zeros((1, width), np.float32), GGMLQuantizationType[type_name])
    except NotImplementedError:
        raise BlackholesError(f"gguf cannot write {type_name} rows (it has no {type_name} quantiser), so they "
                              "cannot be repaired; nothing written") from None


def _files(text: str, m: Matrix) -> Plan:
    """Every file the source reads, and its name in the copy."""
    path = Path(text).expanduser()
    if text.startswith("ollama:"):
        from blackholes.sources.ollama import ollama_store, parse_ollama_name

        blob = Path(m.path)
        _, _, model, tag = parse_ollama_name(text)
        name = re.sub(r"[^A-Za-z0-9._-]+", "-", f"{model}-{tag}").strip("-.") or "model"
        return Plan(text, "ollama", {blob: f"{name}.gguf"}, roots=[ollama_store(None)])
    kind = "gguf" if m.format == "gguf" else "safetensors"
    if path.is_file():
        if kind == "gguf":
            from blackholes.sources.gguf import open_gguf_model

            return Plan(text, kind, {s: s.name for s in open_gguf_model(path).shards})
        return Plan(text, kind, {path: path.name})
    folder = Path(m.path).parent  # a model folder or a cached snapshot: copied whole
    files = {f: str(f.relative_to(folder)) for f in sorted(folder.rglob("*")) if f.is_file()}
    return Plan(text, kind, files, roots=[folder])


# ---------------------------------------------------------------------------- the token set


def repair_tokens(p: Plan, tokens: str, scan) -> tuple[list[int], dict, dict | None]:
    """(sorted ids, sizes of the named sets, the --from scan JSON) checked against the source."""
    from blackholes.pipelines.export import read_scan, token_set

    rows, width = p.targets[0].matrix.shape
    doc = None
    if scan is not None:
        doc = read_scan(scan)
        check_scan(doc, p, scan)
    elif "holes" in str(tokens).split(","):
        doc = {"shape": [rows, width], "groups": [{"token_ids": ids} for ids in _holes(p)]}
    ids, sizes, _ = token_set(doc, tokens, rows)
    if not ids:
        raise BlackholesError(f"the token set {tokens!r} is empty: nothing to repair")
    if len(ids) == rows:
        raise BlackholesError(f"the token set {tokens!r} holds every row: no rows are left to take a recipe from")
    return ids, sizes, doc


def _holes(p: Plan) -> list[list[int]]:
    from blackholes.analysis.exact import find_groups

    return [g.tolist() for t in p.targets for g in find_groups(t.matrix.array)]


def check_scan(doc: dict, p: Plan, where) -> None:
    """A --from scan must be of this model: same shape and dtype, same revision when both
    have one, and every hole it lists bit-identical here; else one line."""
    from blackholes.pipelines.export import matrices

    by_key = {t.key: t for t in p.targets}
    for m in matrices(doc):
        t = by_key.get(m.get("key")) or p.targets[0]
        shape, dtype = list(t.matrix.shape), t.matrix.dtype
        if m.get("shape") != shape or m.get("dtype") not in (None, dtype):
            raise BlackholesError(f"--from {where} is of another model: it scanned a {m.get('shape')} "
                                  f"{m.get('dtype')} matrix, {p.source} has {shape} {dtype}")
        if m.get("revision") and t.matrix.revision and m["revision"] != t.matrix.revision:
            raise BlackholesError(f"--from {where} is of another revision ({m['revision']}, the source is "
                                  f"{t.matrix.revision})")
        for g in m.get("groups") or []:
            ids = g.get("token_ids") if isinstance(g, dict) else None
            if isinstance(ids, list) and ids and all(isinstance(i, int) and 0 <= i < shape[0] for i in ids):
                rows = np.asarray(t.matrix.array[np.asarray(ids)])
                if not (rows == rows[:1]).all() and not _same_bytes(rows):
                    raise BlackholesError(f"--from {where} is of another model: its hole {g.get('id')} "
                                          f"({len(ids)} tokens) is not bit-identical in {p.source}")


def _same_bytes(rows: np.ndarray) -> bool:
    b = np.ascontiguousarray(rows).view(np.uint8).reshape(len(rows), -1)
    return bool((b == b[:1]).all())


# ---------------------------------------------------------------------------- the recipes


def values64(m: Matrix, start: int, stop: int) -> np.ndarray:
    """Rows ``start:stop`` as float64 (widened exactly, or dequantised with gguf's code)."""
    rows = m.array[start:stop]
    if m.dequantize is not None:
        return m.dequantize(rows).astype(np.float64)
    from blackholes.io.dtypes import to_float64

    return np.asarray(to_float64(np.asarray(rows), m.dtype), dtype=np.float64)


def _exact_rows(m: Matrix, start: int, stop: int) -> np.ndarray:
    """Rows ``start:stop`` as numbers float64 holds exactly: as stored for F16/F32/F64, else float32."""
    if m.dtype in ("F16", "F32", "F64") and m.quantization is None:
        return np.asarray(m.array[start:stop])
    return m.float_rows(start, stop)  # BF16 widened, quantised rows dequantised: exact in float32


def outside_stats(m: Matrix, ids: list[int], cov: bool = False) -> tuple[np.ndarray, np.ndarray | None, int]:
    """(mean, covariance or None, n) of the rows not in ``ids``, in float64, a chunk at a time.

    The covariance divides by n, as transformers does for new tokens."""
    n_rows, width = m.shape
    keep = np.ones(n_rows, bool)
    keep[ids] = False
    n = int(keep.sum())
    chunks = list(row_chunks(n_rows, max(1, m.array.shape[1] * m.array.itemsize)))
    total = np.zeros(width, np.float64)
    for lo, hi in chunks:  # summed in float64 where the rows are kept: no float64 copy of the chunk
        total += np.add.reduce(_exact_rows(m, lo, hi), axis=0, dtype=np.float64, where=keep[lo:hi, None])
    mean = total / n
    if not np.isfinite(mean).all():
        raise BlackholesError(f"rows outside the set of {m.key!r} hold NaN or infinity: their mean is undefined")
    if not cov:
        return mean, None, n
    acc = np.zeros((width, width), np.float64)
    for lo, hi in chunks:
        centred = values64(m, lo, hi)[keep[lo:hi]] - mean
        acc += centred.T @ centred
    return mean, acc / n, n


def recipe_values(m: Matrix, ids: list[int], recipe: str, seed: int) -> np.ndarray:
    """float64 [len(ids), width]: the new rows' values before they are written in ``m``'s dtype."""
    k, width = len(ids), m.shape[1]
    if recipe == "zero":
        return np.zeros((k, width), np.float64)
    mean, cov, _ = outside_stats(m, ids, cov=recipe == "mean-cov")
    if recipe == "mean":
        return np.repeat(mean[None, :], k, axis=0)
    rng = np.random.default_rng(seed)
    return rng.multivariate_normal(mean, cov, size=k)


def encode(values: np.ndarray, m: Matrix) -> np.ndarray:
    """float64 rows -> rows as ``m`` stores them (its dtype, or its quantised blocks as bytes)."""
    if m.quantization is not None:
        from gguf.constants import GGMLQuantizationType
        from gguf.quants import quantize

        out = quantize(values.astype(np.float32), GGMLQuantizationType[m.quantization])
        return np.ascontiguousarray(out, dtype=np.uint8).reshape(len(values), -1)
    if m.dtype == "BF16":
        from blackholes.io.dtypes import bf16_from_float32

        return bf16_from_float32(values.astype(np.float32))
    return values.astype(PLAIN[m.dtype])


# ---------------------------------------------------------------------------- the output


def check_out(out, p: Plan) -> Path:
    """``out`` must be a new (or empty) folder, outside every folder and file the source reads."""
    out = Path(out).expanduser()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise BlackholesError(f"--out {out} exists and is not an empty folder; choose a new folder")
    parent = out.parent
    if not parent.is_dir():
        raise BlackholesError(f"output directory does not exist: {parent}")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise BlackholesError(f"cannot write to {parent} (permission denied)")
    real = parent.resolve() / out.name
    for src in [*p.roots, *p.files, *p.reads]:
        for s in {Path(os.path.abspath(src)), Path(src).resolve()}:
            if real == s or s in real.parents:
                raise BlackholesError(f"--out {out} is inside the source ({s}); choose a folder outside it")
    return out


def copy_path(p: Plan, folder: Path) -> str:
    """The copy as a model path: the folder for a model folder, else the one weights file."""
    return str(folder) if p.roots and p.kind != "ollama" else str(folder / p.files[p.targets[0].file])


def write_copy(p: Plan, tmp: Path, ids: list[int], rows: dict[str, np.ndarray]) -> None:
    """Copy every file byte for byte, then overwrite the repaired rows' bytes at their offsets."""
    for src, rel in p.files.items():
        dst = tmp / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)
    for t in p.targets:
        stored = rows[t.which]
        if stored.shape[0] != len(ids) or stored.nbytes != len(ids) * t.row_bytes:
            raise BlackholesError(f"internal: {t.key!r} rows encode to {stored.nbytes} bytes, not "
                                  f"{len(ids) * t.row_bytes}")
        with open(tmp / p.files[t.file], "r+b") as f:
            for i, row in zip(ids, stored):
                f.seek(t.offset + i * t.row_bytes)
                f.write(row.tobytes())


# ---------------------------------------------------------------------------- API


def repair(source, out, *, tokens: str = "holes", scan=None, recipe: str = "mean", matrix: str = "both",
           seed: int = 0, verify: bool = False) -> RepairResult:
    """Write a repaired copy of ``source`` into the new folder ``out``: the rows of ``tokens``
    (holes, verified, ids; sets of the ``scan`` JSON when given) replaced by ``recipe``'s rows
    in the ``matrix`` matrices; re-scanned and checked (see ``RepairResult.report``). ``verify``:
    the model itself verifies the repaired tokens before and after (:mod:`blackholes.verify`;
    the source must be a model it can load: a folder with its tokenizer, a GGUF, Ollama).

    >>> r = repair("model.safetensors", "fixed-zero", tokens="8-15", recipe="zero", matrix="output")
    >>> r.report["check"]["known_group"], r.report["bytes_outside_rows_identical"]
    (True, True)
    """
    from blackholes.io.atomic import remove_stale_temporaries
    from blackholes.pipelines.repair_check import prove, rescan, side_by_side, verdicts, write_report

    if recipe not in RECIPES:
        raise BlackholesError(f"unknown recipe {recipe!r}; one of {', '.join(RECIPES)}")
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**63:
        raise BlackholesError(f"--seed must be an integer from 0 to 2**63 - 1, got {seed!r}")
    p = plan(source, matrix)
    out = check_out(out, p)
    ids, sizes, _ = repair_tokens(p, tokens, scan)
    rows = {t.which: encode(recipe_values(t.matrix, ids, recipe, seed), t.matrix) for t in p.targets}
    before = verdicts(p.source, ids) if verify else None  # a model verify cannot load: refused before writing
    remove_stale_temporaries(out)  # a copy left half-built by a run killed outright
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.{os.getpid()}.", suffix=".tmp", dir=out.parent))
    try:
        write_copy(p, tmp, ids, rows)
        report = {"format": "blackholes.repair", "source": p.source, "kind": p.kind, "recipe": recipe,
                  "seed": seed if recipe == "mean-cov" else None, "tokens": str(tokens), "sets": sizes,
                  "from": None if scan is None else str(scan), "token_ids": ids, "rows": len(ids), "notes": p.notes,
                  "metadata": "every header is the source's (safetensors __metadata__, GGUF metadata): the repair is "
                              "recorded in repair.json and repair.md only"}
        report.update(prove(p, tmp, ids))
        report["check"] = rescan(p, tmp, ids, recipe)
        if verify:
            report["verification"] = side_by_side(before, verdicts(copy_path(p, tmp), ids))
        write_report(tmp, report)
        if out.exists():
            out.rmdir()  # an empty folder the caller made: replaced by the finished copy
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return RepairResult(out=out, targets=p.targets, token_ids=ids, recipe=recipe, report=report)
