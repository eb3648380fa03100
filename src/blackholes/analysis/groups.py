"""Finding black holes: groups of rows that are bit-for-bit identical.

Identity is the identity of raw bits, exactly as ``row.tobytes()`` in the original
notebook: ``+0.0`` and ``-0.0`` differ, two NaNs with the same bits are the same.
Every dtype is compared through an unsigned-integer view of its bytes, so bf16,
f16, f32, f64, ints and fp8 all work, and upcasting bf16 to f32 (which is
injective) gives the same groups.

The algorithm (a prefix sieve, a full hash, a byte-for-byte check) is
:func:`blackholes.analysis.exact.find_groups`.

>>> result = scan("org/tiny")          # Qwen3-4B's unembedding gives (149849, 13, 2100)
>>> result.unique_vectors, len(result.groups), result.black_hole_tokens
(54, 2, 12)
>>> result.save_mask("black_hole_mask.safetensors")
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from blackholes import defaults
from blackholes.errors import BlackholesError
from blackholes.io.safetensors import save_safetensors
from blackholes.sources.load import as_matrix
from blackholes.analysis.anatomy import dead_vocabulary
from blackholes.analysis.exact import find_groups
from blackholes.sources.matrix import Matrix

if TYPE_CHECKING:
    from blackholes.analysis.indicators import Indicators
    from blackholes.analysis.near import Anatomy, NearResult
    from blackholes.analysis.vocabulary import Categories


# ---------------------------------------------------------------------------- result


@dataclass
class Group:
    """One black hole: two or more rows sharing one vector, bit for bit."""

    id: int  # 1 = largest group
    size: int
    token_ids: list[int]  # sorted
    tokens: list[str | None] | None = None  # readable strings (None = padding row) when a tokenizer is known
    token_types: list[str] | None = None  # the model file's token types (GGUF: normal, control, unused, byte, ...)
    categories: list[str] | None = None  # each token's category (analysis.vocabulary), when a tokenizer is known
    scripts: list[str] | None = None  # each token's Unicode script
    counts: dict | None = None  # counts by category, script and round trip

    def to_json(self) -> dict:
        out = {"id": self.id, "size": self.size, "token_ids": self.token_ids}
        if self.tokens is not None:
            out["tokens"] = self.tokens
            out["padding_rows"] = [t for t, s in zip(self.token_ids, self.tokens) if s is None]
        if self.token_types is not None:
            out["token_types"] = self.token_types
        if self.categories is not None:
            out.update(category=self.categories, script=self.scripts, counts=self.counts)
        return out


@dataclass
class ScanResult:
    """What :func:`scan` found. Groups are largest first; equal sizes by smallest token id.

    >>> r = scan("model.safetensors")
    >>> int(r.mask.sum()), r.groups[0].size, r.groups[1].token_ids
    (12, 8, [40, 41, 42, 43])
    """

    source: str
    key: str
    shape: tuple[int, int]
    dtype: str
    unique_vectors: int
    groups: list[Group]
    black_hole_tokens: int
    mask: np.ndarray  # bool [V], True = black-hole token
    black_hole_id: np.ndarray  # int32 [V], 0 = none, i = groups[i-1]
    vectors: np.ndarray = field(repr=False, default=None)  # [n_groups, D] shared vectors, storage dtype
    path: str | None = None  # the .safetensors file read
    tokenizer: str | None = None  # the tokenizer.json used for token strings
    vocab_size: int | None = None  # the tokenizer's vocabulary (rows beyond it are padding)
    note: str = ""  # why this tensor was chosen
    seconds: float = 0.0  # time spent finding the groups
    format: str = "safetensors"  # where the rows came from: "safetensors", "gguf" or "array"
    quantization: str | None = None  # GGUF block type: identity is of the quantised row bytes
    tied: bool | None = None  # whether the model's output matrix is its input embedding, when known
    revision: str | None = None  # resolved snapshot / blob digest
    bytes_read: int | None = None  # bytes fetched over the network (remote sources)
    matrix: str | None = None  # "input" / "output"
    clusters: NearResult | None = field(default=None, repr=False)  # scan(near=K)
    anatomy: Anatomy | None = field(default=None, repr=False)  # how the holes' vectors differ
    indicators: Indicators | None = field(default=None, repr=False)  # scan(indicators=True)
    categories: Categories | None = field(default=None, repr=False)  # of the tokens shown
    source_matrix: Matrix | None = field(default=None, repr=False, compare=False)  # what was scanned (not in JSON)
    notes: list = field(default_factory=list)  # options that do not apply to this matrix, and why

    def halo(self, hole_id: int) -> list[int]:
        """The halo of hole ``hole_id`` (1 = the largest): near rows in no exact hole (needs ``near=K``)."""
        if self.clusters is None:
            raise BlackholesError("no near-duplicate clusters were computed: scan with near=K (--near K)")
        if not 1 <= hole_id <= len(self.groups):
            raise BlackholesError(f"there is no hole {hole_id}; holes are numbered 1 to {len(self.groups)}")
        return self.clusters.halo(hole_id - 1)

    @property
    def candidates(self) -> list[int]:
        """Under-trained candidates beyond the holes, most dead first (needs ``indicators=True``)."""
        return [] if self.indicators is None else [int(i) for i in self.indicators.candidates]

    def to_json(self) -> dict:
        """A JSON-ready report (``write_json(path, result.to_json())``)."""
        out = {
            "source": self.source,
            "path": self.path,
            "key": self.key,
            "shape": list(self.shape),
            "dtype": self.dtype,
            "format": self.format,
            "quantization": self.quantization,
            "identity": ("bit identity of the stored quantised row bytes (" + self.quantization + " blocks)"
                         if self.quantization else "bit identity of the stored row values"),
            "matrix": self.matrix,
            "tied": self.tied,
            "revision": self.revision,
            "bytes_read": self.bytes_read,
            "unique_vectors": self.unique_vectors,
            "black_hole_tokens": self.black_hole_tokens,
            "black_hole_fraction": self.black_hole_tokens / self.shape[0],
            "n_groups": len(self.groups),
            "tie_break": "groups sorted by size (largest first), then by smallest token id",
        }
        if self.tokenizer is not None:
            out["tokenizer"] = self.tokenizer
            out["vocab_size"] = self.vocab_size
            out["padding_rows"] = max(0, self.shape[0] - (self.vocab_size or 0))
        out["groups"] = [g.to_json() for g in self.groups]
        if self.anatomy is not None:
            out["anatomy"] = self.anatomy.to_json()
        if self.clusters is not None:
            out["clusters"] = self.clusters.to_json()
            out["halo_size"] = sum(len(c.singletons) for c in self.clusters.clusters if c.holes)
            if self.categories is not None:
                for c, doc in zip(self.clusters.clusters, out["clusters"]["clusters"]):
                    doc["counts"] = self.categories.summary(c.rows)
                    doc["singleton_tokens"] = self.categories.to_json(c.singletons)
        if self.indicators is not None:
            out["indicators"] = self.indicators.to_json(self.categories)
            out["candidates"] = out["indicators"].get("candidates")
        if self.categories is not None:
            out["vocabulary"] = {"kind": self.categories.kind, "available": list(self.categories.available)}
        if self.notes:
            out["notes"] = list(self.notes)
        return out

    def save_mask(self, path: str | os.PathLike, extra: dict | None = None) -> None:
        """Write ``mask`` (bool [V]), ``black_hole_id`` (int32 [V]) and ``vectors``
        ([n_groups, D], the source dtype; row i-1 = group i) as safetensors, atomically;
        with ``near`` also ``cluster_id`` (int32 [V], 0 = in no cluster), with
        ``indicators`` also ``candidate`` (bool [V]); ``extra``: more tensors (e.g. verdicts).

        >>> scan("model.safetensors").save_mask("black_hole_mask.safetensors")
        >>> from safetensors.numpy import load_file
        >>> int(load_file("black_hole_mask.safetensors")["black_hole_id"][40])
        2
        """
        save_safetensors(path, {**self.mask_tensors(), **(extra or {})}, metadata=self.mask_metadata())

    def mask_tensors(self, suffix: str = "") -> dict:
        """``mask``, ``black_hole_id`` and ``vectors`` (+ ``suffix``) as :func:`save_safetensors` takes them.

        Quantised rows (GGUF blocks) are stored as their raw bytes (U8); ``vectors_dtype`` in
        the metadata names the block type."""
        vectors = self.vectors if self.vectors is not None else np.zeros((0, self.shape[1]), np.uint8)
        stored = "U8" if self.quantization else self.dtype
        out = {f"mask{suffix}": self.mask, f"black_hole_id{suffix}": self.black_hole_id,
               f"vectors{suffix}": (vectors, stored)}
        if self.clusters is not None:  # so a notebook can mask the halo too
            cluster_id = np.zeros(self.shape[0], np.int32)
            for c in self.clusters.clusters:
                cluster_id[c.rows] = c.id
            out[f"cluster_id{suffix}"] = cluster_id
        if self.indicators is not None:
            candidate = np.zeros(self.shape[0], bool)
            candidate[self.candidates] = True
            out[f"candidate{suffix}"] = candidate
        return out

    def mask_metadata(self) -> dict[str, str]:
        return {
            "format": "blackholes.mask",
            "source": self.source,
            "key": self.key,
            "shape": f"{list(self.shape)}",
            "dtype": self.dtype,
            "vectors_dtype": self.dtype,
            "quantization": self.quantization or "",
            "unique_vectors": str(self.unique_vectors),
            "black_hole_tokens": str(self.black_hole_tokens),
            "groups": str(len(self.groups)),
        }

    def summary(self, top: int = 10) -> str:
        """The printed report, in the words of the original notebook."""
        from blackholes.analysis.summary import scan_summary

        return scan_summary(self, top=top)

    def _repr_markdown_(self) -> str:
        """What Jupyter shows for a result left at the end of a cell: the counts and the largest holes."""
        from blackholes.analysis.summary import scan_markdown

        return scan_markdown(self)


# ---------------------------------------------------------------------------- API


def scan(
    source,
    *,
    key: str | None = None,
    matrix: str | None = None,
    tokenizer: str | os.PathLike | None = None,
    dtype: str | None = None,
    near: int | None = None,
    indicators: bool = False,
    reference=None,
    percentile: float = defaults.PERCENTILE,
    progress: bool = False,
    threads: int | None = None,
) -> ScanResult:
    """Find every group of bit-identical rows in an embedding matrix.

    ``source``: anything :func:`~blackholes.sources.load_matrix` takes (a ``.safetensors``
    file, a model folder, a cached model id), a :class:`~blackholes.sources.matrix.Matrix`, or a
    2-D numpy array (``dtype`` names its safetensors dtype, e.g. ``"BF16"`` for uint16
    bits; default from the numpy dtype). ``tokenizer``: a ``tokenizer.json`` (or a folder
    holding one) for token strings; default: the one beside the model (or the GGUF
    vocabulary). The anatomy of the dead vocabulary, on request: ``near=K`` finds the
    clusters of rows within K ULPs (the halos of the holes); ``indicators=True`` computes
    Magikarp's under-trained indicators (``reference`` ids override the automatic
    reference set) and lists the candidates at or below ``percentile``. When a tokenizer
    is known, every token in a hole, a halo or the candidate list gets its category and
    Unicode script. ``threads``: for hashing (default: up to 2; 1 in a pool of workers).

    >>> [g.size for g in scan("org/tiny").groups]            # cached, offline
    [8, 4]
    >>> scan(np.zeros((5, 3), np.float32)).black_hole_tokens  # any 2-D array
    5
    """
    m = as_matrix(source, key=key, matrix=matrix, dtype=dtype)
    n, d = m.shape
    t0 = time.perf_counter()
    found = find_groups(m.array, threads=threads)
    seconds = time.perf_counter() - t0

    ids = np.concatenate(found).tolist() if found else []
    strings, vocab_size, tok_path = _token_strings(m, tokenizer, ids)

    groups, mask, black_hole_id, vectors = _holes(m, found, strings)
    black = int(mask.sum())
    extras = dead_vocabulary(m, found, tokenizer=tokenizer or m.tokenizer, near=near, indicators=indicators,
                             reference=reference, percentile=percentile, progress=progress)
    _label_groups(groups, extras.categories)
    return ScanResult(
        source=m.source,
        key=m.key,
        shape=(n, d),
        dtype=m.dtype,
        unique_vectors=n - black + len(groups),
        groups=groups,
        black_hole_tokens=black,
        mask=mask,
        black_hole_id=black_hole_id,
        vectors=vectors,
        path=str(m.path) if m.path is not None else None,
        tokenizer=tok_path,
        vocab_size=vocab_size,
        note=m.note,
        seconds=seconds,
        format=m.format,
        quantization=m.quantization,
        tied=m.tied,
        revision=m.revision,
        bytes_read=m.bytes_read,
        matrix=m.matrix,
        clusters=extras.clusters,
        anatomy=extras.anatomy,
        indicators=extras.indicators,
        categories=extras.categories,
        source_matrix=m,
        notes=extras.notes,
    )


def _holes(m: Matrix, found: list[np.ndarray], strings) -> tuple[list[Group], np.ndarray, np.ndarray, np.ndarray]:
    """(the Groups, mask [V], black_hole_id [V], one vector per hole) from the exact groups found."""
    n, d = m.shape
    mask = np.zeros(n, dtype=bool)
    black_hole_id = np.zeros(n, dtype=np.int32)
    groups = []
    for i, ids in enumerate(found, start=1):
        mask[ids] = True
        black_hole_id[ids] = i
        id_list = ids.tolist()
        toks = [strings[t] for t in id_list] if strings is not None else None
        groups.append(Group(id=i, size=len(id_list), token_ids=id_list, tokens=toks, token_types=_types(m, id_list)))
    first = np.array([ids[0] for ids in found], dtype=np.int64)
    vectors = np.array(m.array[first]) if len(first) else np.zeros((0, d), m.array.dtype)
    return groups, mask, black_hole_id, vectors


def _label_groups(groups: list[Group], categories) -> None:
    """Each hole's tokens' categories and scripts, and their counts (when a tokenizer is known)."""
    if categories is None:
        return
    for g in groups:
        g.categories = [categories[t].category for t in g.token_ids]
        g.scripts = [categories[t].script for t in g.token_ids]
        g.counts = categories.summary(g.token_ids)


def _types(m: Matrix, ids: list[int]) -> list[str] | None:
    """The model file's own token type of each id ("padding" beyond its vocabulary), when it has them."""
    vocab = m.vocabulary
    if vocab is None or vocab.types is None:
        return None
    return [vocab.types[t] if t < vocab.size else "padding" for t in ids]


def _token_strings(m: Matrix, tokenizer, ids: list[int]):
    """(strings by id, vocabulary size, where they came from): ``tokenizer`` if given, else the
    tokenizer.json beside the model, else the vocabulary stored in the model file (GGUF)."""
    tok_path = Path(tokenizer) if tokenizer is not None else m.tokenizer
    if tok_path is not None:
        from blackholes.sources.tokenizer import token_strings

        strings, size, tok_path = token_strings(tok_path, ids)
        return strings, size, str(tok_path)
    if m.vocabulary is not None:
        from blackholes.sources.tokenizer import vocabulary_strings

        return vocabulary_strings(m.vocabulary, ids), m.vocabulary.size, f"{m.format} metadata"
    return None, None, None


@dataclass
class ModelScan:
    """Both matrices of one model (``--matrix both``): the input embedding and, when the
    model does not tie them, the output matrix.

    >>> both = scan_both("org/tiny")
    >>> both.tied, both.input.key, both.output.key
    (False, 'model.embed_tokens.weight', 'lm_head.weight')
    """

    input: ScanResult
    output: ScanResult | None  # None when tied: the output matrix *is* the input embedding
    tied: bool

    @property
    def results(self) -> list[ScanResult]:
        return [self.input] + ([self.output] if self.output is not None else [])

    def to_json(self) -> dict:
        return {"source": self.input.source, "tied": self.tied,
                "matrices": {r.matrix or name: r.to_json() for name, r in zip(("input", "output"), self.results)}}

    def save_mask(self, path: str | os.PathLike, extra: dict | None = None) -> None:
        """``mask_input`` / ``mask_output`` (and their ids and vectors) and ``mask``, their union
        (``extra``: more tensors)."""
        tensors = self.input.mask_tensors("_input")
        union = self.input.mask.copy()
        if self.output is not None:
            tensors.update(self.output.mask_tensors("_output"))
            union |= self.output.mask
        tensors["mask"] = union
        tensors.update(extra or {})
        meta = {**self.input.mask_metadata(), "matrices": "input" + (",output" if self.output else ""),
                "tied": str(self.tied).lower()}
        save_safetensors(path, tensors, metadata=meta)

    def summary(self, top: int = 10) -> str:
        parts = [r.summary(top=top) for r in self.results]
        if self.tied:
            parts.append("The model ties its output matrix to the input embedding: one matrix scanned.")
        return "\n\n".join(parts)

    def _repr_markdown_(self) -> str:
        """Each scanned matrix as :meth:`ScanResult._repr_markdown_` shows it."""
        parts = [r._repr_markdown_() for r in self.results]
        if self.tied:
            parts.append("*The model ties its output matrix to the input embedding: one matrix scanned.*")
        return "\n\n---\n\n".join(parts)


def scan_both(source, *, tokenizer: str | os.PathLike | None = None, cache=None, progress: bool = False,
              check=None, **options) -> ModelScan:
    """Scan the input embedding and the output matrix of one model, each once.

    Tied when the model says so or when both resolve to the same tensor of the same file.
    ``options`` are :func:`scan`'s (``near``, ``indicators``, ...); ``check(matrix)`` is called
    on each loaded matrix before it is scanned (the CLI checks its outputs there).
    """
    from blackholes.sources import load_matrix

    loaded = {}
    for which in ("input", "output"):
        m = load_matrix(source, matrix=which, cache=cache, progress=progress)
        m.matrix = which
        if check is not None:
            check(m)
        loaded[which] = m
    m_in, m_out = loaded["input"], loaded["output"]
    tied = bool(m_out.tied) or (m_out.key == m_in.key and m_out.path == m_in.path and m_out.url == m_in.url)
    result_in = scan(m_in, tokenizer=tokenizer, progress=progress, **options)
    result_out = None if tied else scan(m_out, tokenizer=tokenizer, progress=progress, **options)
    return ModelScan(input=result_in, output=result_out, tied=tied)
