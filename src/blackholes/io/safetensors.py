"""Loading tensors: memory-mapped, zero-copy views of tensors in safetensors files.

The safetensors format is an 8-byte little-endian header length, a JSON header
(``{"name": {"dtype", "shape", "data_offsets"}, "__metadata__": {...}}``) and
the raw bytes. ``safetensors.numpy.load_file`` copies every tensor into memory
and has no bfloat16; a scan of one matrix in a multi-GB checkpoint must touch
only that matrix's bytes, so we read the header ourselves and hand numpy a
memory map of exactly one tensor.

bfloat16 (and the fp8 types) have no numpy dtype: they are mapped as unsigned
integers of the same width, which is exactly what a bit-identity comparison
wants; :func:`to_float32` widens them when arithmetic is needed.

>>> info = read_header("model.safetensors")
>>> emb = open_tensor("model.safetensors", "model.embed_tokens.weight")
>>> emb.shape, info.tensors["model.embed_tokens.weight"].dtype
((151936, 2560), 'BF16')
"""

from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from blackholes.errors import BlackholesError

# safetensors dtype -> numpy dtype used to *store/view* the bytes.
STORAGE_DTYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "U8": np.dtype("<u1"),
    "I8": np.dtype("<i1"),
    "U16": np.dtype("<u2"),
    "I16": np.dtype("<i2"),
    "U32": np.dtype("<u4"),
    "I32": np.dtype("<i4"),
    "U64": np.dtype("<u8"),
    "I64": np.dtype("<i8"),
    "F16": np.dtype("<f2"),
    "F32": np.dtype("<f4"),
    "F64": np.dtype("<f8"),
    "BF16": np.dtype("<u2"),  # no numpy bfloat16: raw bits
    "F8_E4M3": np.dtype("<u1"),  # raw bits
    "F8_E5M2": np.dtype("<u1"),  # raw bits
}

# The inverse for writing: numpy dtype -> safetensors dtype name.
SAFETENSORS_DTYPES: dict[np.dtype, str] = {
    np.dtype(np.bool_): "BOOL",
    np.dtype("<u1"): "U8",
    np.dtype("<i1"): "I8",
    np.dtype("<u2"): "U16",
    np.dtype("<i2"): "I16",
    np.dtype("<u4"): "U32",
    np.dtype("<i4"): "I32",
    np.dtype("<u8"): "U64",
    np.dtype("<i8"): "I64",
    np.dtype("<f2"): "F16",
    np.dtype("<f4"): "F32",
    np.dtype("<f8"): "F64",
}

_MAX_HEADER = 100_000_000  # the limit safetensors itself enforces


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lives in a safetensors file."""

    name: str
    dtype: str  # safetensors name: "BF16", "F32", ...
    shape: tuple[int, ...]
    start: int  # absolute byte offset in the file
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.start


@dataclass(frozen=True)
class Header:
    """The parsed header of a safetensors file."""

    path: Path
    tensors: dict[str, TensorInfo]
    metadata: dict[str, str] = field(default_factory=dict)
    data_start: int = 0


def read_header(path: str | os.PathLike) -> Header:
    """Parse and validate a safetensors header without reading any tensor data.

    Raises :class:`BlackholesError` with a one-line reason for a missing file,
    a file that is not safetensors, a truncated or corrupt header.

    >>> h = read_header("model.safetensors")
    >>> sorted(h.tensors)[:2]
    ['lm_head.weight', 'model.embed_tokens.weight']
    """
    path = Path(path)
    if not path.exists():
        raise BlackholesError(f"no such file: {path}")
    if path.is_dir():
        raise BlackholesError(f"expected a .safetensors file, got a directory: {path}")
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise BlackholesError(f"not a safetensors file (only {size} bytes): {path}")
            (n,) = struct.unpack("<Q", head)
            if n == 0 or n > _MAX_HEADER or 8 + n > size:
                raise BlackholesError(
                    f"not a safetensors file, or its header is truncated "
                    f"(header length {n}, file size {size}): {path}"
                )
            raw = f.read(n)
    except OSError as e:
        raise BlackholesError(f"cannot read {path}: {e.strerror or e}") from None
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise BlackholesError(f"not a safetensors file (corrupt JSON header): {path}") from None
    if not isinstance(doc, dict):
        raise BlackholesError(f"not a safetensors file (header is not a JSON object): {path}")

    data_start = 8 + n
    metadata = doc.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict):
        raise BlackholesError(f"corrupt safetensors header (bad __metadata__): {path}")
    tensors: dict[str, TensorInfo] = {}
    for name, entry in doc.items():
        tensors[name] = _tensor_entry(name, entry, data_start, size, path)
    return Header(path=path, tensors=tensors, metadata=dict(metadata), data_start=data_start)


def _tensor_entry(name: str, entry, data_start: int, size: int, path: Path) -> TensorInfo:
    """Validate one header entry. Dtypes we cannot read are kept (the file may hold
    other tensors we can); only their byte count goes unchecked."""

    def bad(why: str) -> BlackholesError:
        return BlackholesError(f"corrupt safetensors header (tensor {name!r}: {why}): {path}")

    if not isinstance(entry, dict):
        raise bad("entry is not a JSON object")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if not isinstance(dtype, str):
        raise bad(f"dtype {dtype!r} is not a name")
    if not isinstance(shape, list) or not all(_is_count(s) for s in shape):
        raise bad(f"shape {shape!r} is not a list of non-negative integers")
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_count(o) for o in offsets):
        raise bad(f"data_offsets {offsets!r} is not two non-negative integers")
    begin, end = offsets
    if end < begin:
        raise bad(f"data_offsets {offsets} end before they begin")
    if dtype in STORAGE_DTYPES:
        expected = math.prod(shape) * STORAGE_DTYPES[dtype].itemsize  # Python ints: no overflow
        if end - begin != expected:
            raise bad(f"shape {shape} does not match its {end - begin} bytes")
    if data_start + end > size:
        raise BlackholesError(
            f"truncated safetensors file (tensor {name!r} ends at byte "
            f"{data_start + end}, file has {size}): {path}"
        )
    return TensorInfo(name, dtype, tuple(shape), data_start + begin, data_start + end)


def _is_count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def open_tensor(path: str | os.PathLike, key: str, header: Header | None = None) -> np.ndarray:
    """Memory-map one tensor read-only, in its storage dtype (bf16 as raw ``uint16``).

    Only the pages actually touched are read from disk.

    >>> emb = open_tensor("run.safetensors", "embeddings")   # (steps+1, V, D)
    """
    header = header or read_header(path)
    return map_tensor(header.path, _tensor_info(header, key))


def map_tensor(path: str | os.PathLike, info: TensorInfo) -> np.ndarray:
    """Memory-map the tensor described by ``info`` (see :func:`read_header`)."""
    dtype = STORAGE_DTYPES.get(info.dtype)
    if dtype is None:
        raise BlackholesError(
            f"tensor {info.name!r} in {path} has dtype {info.dtype}, which blackholes cannot read "
            f"(supported: {', '.join(STORAGE_DTYPES)})"
        )
    if info.nbytes == 0:
        return np.empty(info.shape, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r", offset=info.start, shape=info.shape)


def to_float32(array: np.ndarray, dtype: str) -> np.ndarray:
    """Widen a tensor (as returned by :func:`open_tensor`) to float32 for arithmetic.

    bf16 widening is exact (bf16 is the top half of a float32). Never use the
    result to decide identity: compare raw bits instead.

    >>> to_float32(open_tensor(p, "embeddings")[5], "BF16")
    """
    if dtype == "BF16":
        return (np.asarray(array, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)
    if dtype in ("F8_E4M3", "F8_E5M2"):
        raise BlackholesError(f"arithmetic on {dtype} tensors is not supported; compare bits instead")
    return np.asarray(array).astype(np.float32)


def bf16_from_float32(array: np.ndarray) -> np.ndarray:
    """Round float32 to bfloat16 (nearest-even), returned as raw ``uint16`` bits."""
    bits = np.ascontiguousarray(array, dtype=np.float32).view(np.uint32)
    rounded = bits + 0x7FFF + ((bits >> 16) & 1)
    out = (rounded >> 16).astype(np.uint16)
    nan = np.isnan(array)
    if nan.any():
        out[nan] = (bits[nan] >> 16).astype(np.uint16) | 0x0040  # keep NaN a quiet NaN
    return out


# ---------------------------------------------------------------------------- sources
#
# A scan names *where* the matrix is (a file, a model folder, a cached model id);
# load_matrix turns that into one memory-mapped 2-D tensor and says which key,
# which file, and which tokenizer.json belongs to it.

# Input embeddings, most common first. Exact names; _find_named also accepts
# a key that ends with one of these after a wrapper's prefix (e.g. "language_model."),
# except for the names generic enough to occur inside a layer (_EXACT_ONLY).
INPUT_EMBEDDING_NAMES = (
    "model.embed_tokens.weight",  # Llama, Qwen, Mistral, Gemma, Phi-3, OPT-style decoders
    "transformer.wte.weight",  # GPT-2, GPT-J, Falcon-old, StarCoder
    "gpt_neox.embed_in.weight",  # Pythia / GPT-NeoX
    "embeddings.word_embeddings.weight",  # BERT-style encoders (saved without prefix)
    "bert.embeddings.word_embeddings.weight",
    "roberta.embeddings.word_embeddings.weight",
    "transformer.word_embeddings.weight",  # BLOOM, Falcon
    "model.decoder.embed_tokens.weight",  # OPT, BART decoder
    "transformer.embedding.word_embeddings.weight",  # ChatGLM
    "transformer.embd.wte.weight",  # phi-1
    "model.language_model.embed_tokens.weight",  # multimodal wrappers (Gemma 3, ...)
    "language_model.model.embed_tokens.weight",
    "shared.weight",  # T5
    "tok_embeddings.weight",  # original Llama checkpoints
    "embed_tokens.weight",
    "word_embeddings.weight",
    "wte.weight",
    "token_embedding.weight",
    "embeddings",  # a bare matrix saved by a notebook
    "embedding",
)
OUTPUT_EMBEDDING_NAMES = (
    "lm_head.weight",
    "gpt_neox.embed_out.weight",
    "embed_out.weight",  # Pythia / GPT-NeoX
    "language_model.lm_head.weight",
    "transformer.output_layer.weight",  # ChatGLM
    "output.weight",  # original Llama checkpoints
    "cls.predictions.decoder.weight",  # BERT MLM head
    "unembedding",
    "gamma",  # the original notebooks' name for the unembedding matrix
)


@dataclass
class Matrix:
    """One 2-D embedding matrix, memory-mapped, and where it came from.

    >>> m = load_matrix("Qwen/Qwen3-4B-Instruct-2507")
    >>> m.key, m.dtype, m.shape
    ('lm_head.weight', 'BF16', (151936, 2560))
    """

    array: np.ndarray  # 2-D, storage dtype (BF16 as raw uint16 bits); a memmap when read from disk
    dtype: str  # safetensors dtype name: "BF16", "F32", ...
    source: str  # as the caller gave it
    path: Path | None  # the .safetensors file holding the tensor (None for an in-memory array)
    key: str  # tensor name inside that file
    tokenizer: Path | None = None  # tokenizer.json beside the model, when there is one
    matrix: str | None = None  # "input" / "output" when chosen from a model folder
    note: str = ""  # why this tensor was picked, for the summary

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.array.shape)  # type: ignore[return-value]


def load_matrix(source: str | os.PathLike, key: str | None = None, matrix: str | None = None) -> Matrix:
    """Find and memory-map one embedding matrix; read no other tensor's bytes.

    ``source`` is a ``.safetensors`` file, a Hugging Face model folder (``config.json``
    with ``model.safetensors`` or a sharded ``model.safetensors.index.json``), or a model
    id (``org/name``, optionally ``org/name@revision``) already in the local Hugging Face
    cache. ``key`` names the tensor; otherwise ``matrix`` ("input" or "output", default
    "output" — the input embedding when the model ties them) picks a well-known name.

    >>> m = load_matrix("gpt2")                      # cached: transformer.wte.weight (tied)
    >>> m = load_matrix("ckpt/model.safetensors", key="lm_head.weight")
    """
    if matrix not in (None, "input", "output"):
        raise BlackholesError(f"matrix must be 'input' or 'output', not {matrix!r}")
    text = os.fspath(source)
    path = Path(text).expanduser()
    if path.is_dir():
        m = _load_from_folder(path, key, matrix)
    elif path.exists():
        m = _load_from_file(path, key, matrix)
    elif _looks_like_model_id(text):
        m = _load_from_folder(_cached_snapshot(text), key, matrix)
    else:
        raise BlackholesError(f"no such file or directory: {text}")
    m.source = text
    return m


def _check_2d(info: TensorInfo, path: Path) -> None:
    if len(info.shape) != 2:
        raise BlackholesError(
            f"tensor {info.name!r} in {path} has shape {list(info.shape)}; expected a 2-D "
            f"[vocab, dim] matrix (pick another with --key)"
        )
    if info.shape[0] == 0 or info.shape[1] == 0:
        raise BlackholesError(f"tensor {info.name!r} in {path} is empty (shape {list(info.shape)})")


# Names that also occur inside layers (RWKV's "blocks.3.attention.output.weight"):
# matched only exactly, like the bare names ("embeddings", "gamma").
_EXACT_ONLY = frozenset({"output.weight", "shared.weight"})


def _find_named(keys, names) -> str | None:
    """The first of ``names`` present in ``keys``: exactly, else after a wrapper's prefix
    that is not inside a numbered layer (``language_model.`` yes, ``blocks.3.`` no)."""
    keys = list(keys)
    present = set(keys)
    for name in names:
        if name in present:
            return name
    for name in names:
        if "." not in name or name in _EXACT_ONLY:
            continue
        hits = sorted(k for k in keys if k.endswith("." + name) and not _in_a_layer(k[: -len(name) - 1]))
        if hits:
            return hits[0]
    return None


def _in_a_layer(prefix: str) -> bool:
    return any(part.isdigit() for part in prefix.split("."))


def _check_rows(output: str, input: str | None, shape_of, where) -> None:
    """An output matrix has one row per token, like the input embedding: refuse a pick that does not."""
    if input is None or input == output:
        return
    rows_out, rows_in = shape_of(output)[:1], shape_of(input)[:1]
    if rows_out != rows_in:
        raise BlackholesError(
            f"{output!r} (shape {list(shape_of(output))}) does not have the input embedding {input!r}'s "
            f"{rows_in[0] if rows_in else 0:,} rows, so it is not taken as the output matrix of {where}; "
            f"pick one with --key"
        )


def _load_from_file(path: Path, key: str | None, matrix: str | None) -> Matrix:
    header = read_header(path)
    if key is None:
        key, note = _pick_in_file(header, matrix)
    else:
        note = "--key"
    return _matrix(header, key, folder=path.parent, matrix=matrix, note=note)


def _matrix(header: Header, key: str, *, folder: Path, matrix: str | None, note: str) -> Matrix:
    """Memory-map ``key`` as a 2-D Matrix, with the tokenizer.json found in ``folder``."""
    info = _tensor_info(header, key)
    _check_2d(info, header.path)
    tok = folder / "tokenizer.json"
    return Matrix(
        array=map_tensor(header.path, info),
        dtype=info.dtype,
        source=str(header.path),  # load_matrix replaces it with the source as given
        path=header.path,
        key=key,
        tokenizer=tok if tok.is_file() else None,
        matrix=matrix,
        note=note,
    )


def _tensor_info(header: Header, key: str) -> TensorInfo:
    """``header.tensors[key]``, or an error that lists the keys there are."""
    try:
        return header.tensors[key]
    except KeyError:
        keys = ", ".join(sorted(header.tensors)) or "(none)"
        raise BlackholesError(f"tensor {key!r} not found in {header.path}; keys: {keys}") from None


def _pick_in_file(header: Header, matrix: str | None) -> tuple[str, str]:
    """Choose the tensor in a lone file: the only 2-D one, else a well-known name."""
    two_d = sorted(n for n, t in header.tensors.items() if len(t.shape) == 2)
    if matrix is None and len(two_d) == 1:
        return two_d[0], "the only 2-D tensor"
    if matrix == "input":
        names = INPUT_EMBEDDING_NAMES
    elif matrix == "output":
        names = OUTPUT_EMBEDDING_NAMES
    else:
        names = OUTPUT_EMBEDDING_NAMES + INPUT_EMBEDDING_NAMES
    found = _find_named(two_d, names)
    if found is not None:
        if matrix != "input" and found == _find_named(two_d, OUTPUT_EMBEDDING_NAMES):
            _check_rows(found, _find_named(two_d, INPUT_EMBEDDING_NAMES), lambda k: header.tensors[k].shape,
                        header.path)
        return found, "well-known name"
    if not header.tensors:
        raise BlackholesError(f"no tensors in {header.path}")
    if not two_d:
        shapes = ", ".join(f"{n} {list(t.shape)}" for n, t in sorted(header.tensors.items())[:20])
        raise BlackholesError(f"no 2-D tensor in {header.path} (tensors: {shapes})")
    listed = ", ".join(two_d[:20]) + (f", ... ({len(two_d)} in all)" if len(two_d) > 20 else "")
    if matrix is not None:
        raise BlackholesError(
            f"no {matrix} embedding with a known name in {header.path}; pick one with --key: {listed}"
        )
    raise BlackholesError(f"several 2-D tensors in {header.path}; pick one with --key: {listed}")


def _read_json(path: Path) -> dict:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BlackholesError(f"cannot read {path}: {getattr(e, 'strerror', None) or e}") from None
    if not isinstance(doc, dict):
        raise BlackholesError(f"unexpected contents (not a JSON object): {path}")
    return doc


def _is_tied(config: dict) -> bool:
    """Whether the config says the output matrix is the input embedding."""
    for cfg in (config, config.get("text_config") or {}):
        if isinstance(cfg, dict) and cfg.get("tie_word_embeddings") is True:
            return True
    return False


def _load_from_folder(folder: Path, key: str | None, matrix: str | None) -> Matrix:
    """A Hugging Face model folder: single-file or sharded safetensors weights."""
    index = folder / "model.safetensors.index.json"
    single = folder / "model.safetensors"
    if index.is_file():
        weight_map = _read_json(index).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise BlackholesError(f"no weight_map in {index}")
        keys = sorted(weight_map)
    elif single.is_file():
        weight_map = None
        keys = sorted(read_header(single).tensors)
    else:
        others = sorted(p.name for p in folder.glob("*.safetensors"))
        if len(others) == 1:
            single, weight_map = folder / others[0], None
            keys = sorted(read_header(single).tensors)
        else:
            found = sorted(p.name for p in folder.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".gguf", ".h5"))
            hint = f" (found {', '.join(found)}; only safetensors is read)" if found else ""
            many = f" (several .safetensors files and no index: {', '.join(others)})" if others else ""
            raise BlackholesError(f"no safetensors weights in {folder}{many or hint}")

    config_path = folder / "config.json"
    config = _read_json(config_path) if config_path.is_file() else {}
    if key is not None:
        note = "--key"
    else:
        key, note = _pick_in_model(keys, config, matrix, folder, _shape_reader(folder, weight_map, single))
    if weight_map is not None:
        if key not in weight_map:
            raise BlackholesError(f"tensor {key!r} not found in {index}; keys: {_short_list(keys)}")
        path = folder / _shard_name(weight_map, key, folder)  # the one shard holding it
    else:
        path = single
    return _matrix(read_header(path), key, folder=folder, matrix=matrix or "output", note=note)


def _shard_name(weight_map: dict, key: str, folder: Path) -> str:
    shard = weight_map[key]
    if not isinstance(shard, str) or not shard:
        index = folder / "model.safetensors.index.json"
        raise BlackholesError(f"corrupt weight_map in {index}: {key!r} maps to {shard!r}, not a file name")
    return shard


def _short_list(keys, n: int = 30) -> str:
    keys = list(keys)
    return ", ".join(keys[:n]) + (f", ... ({len(keys)} in all)" if len(keys) > n else "")


def _shape_reader(folder: Path, weight_map: dict | None, single: Path):
    """``shape_of(key)``, reading only the header of the file holding ``key``."""

    def shape_of(key: str) -> tuple[int, ...]:
        path = single if weight_map is None else folder / _shard_name(weight_map, key, folder)
        return _tensor_info(read_header(path), key).shape

    return shape_of


def _pick_in_model(keys, config: dict, matrix: str | None, folder: Path, shape_of) -> tuple[str, str]:
    matrix = matrix or "output"
    tied = _is_tied(config)
    if matrix == "output" and not tied:
        found = _find_named(keys, OUTPUT_EMBEDDING_NAMES)
        if found is not None:
            _check_rows(found, _find_named(keys, INPUT_EMBEDDING_NAMES), shape_of, folder)
            return found, "output matrix"
    found = _find_named(keys, INPUT_EMBEDDING_NAMES)
    if found is not None:
        if matrix == "input":
            return found, "input embedding"
        why = "tie_word_embeddings" if tied else "no separate lm_head"
        return found, f"output matrix = input embedding ({why})"
    raise BlackholesError(
        f"no {matrix} embedding matrix with a known name in {folder}; pick one with --key "
        f"(keys: {_short_list(keys)})"
    )


# ---------------------------------------------------------------------------- HF cache


def _looks_like_model_id(text: str) -> bool:
    import re

    return bool(re.fullmatch(r"[\w.\-]+(/[\w.\-]+)?(@[\w.\-/]+)?", text)) and not text.endswith(".safetensors")


def hf_cache_dir() -> Path:
    """The Hugging Face hub cache, honouring HF_HUB_CACHE / HF_HOME as set *now*.

    (``huggingface_hub.constants`` reads the environment once, at import.)
    """
    env = os.environ
    if env.get("HF_HUB_CACHE"):
        return Path(env["HF_HUB_CACHE"]).expanduser()
    if env.get("HUGGINGFACE_HUB_CACHE"):
        return Path(env["HUGGINGFACE_HUB_CACHE"]).expanduser()
    if env.get("HF_HOME"):
        return Path(env["HF_HOME"]).expanduser() / "hub"
    if env.get("XDG_CACHE_HOME"):
        return Path(env["XDG_CACHE_HOME"]).expanduser() / "huggingface" / "hub"
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def _cached_snapshot(model_id: str) -> Path:
    """The snapshot folder of ``org/name[@revision]`` in the local cache; never downloads."""
    from huggingface_hub import try_to_load_from_cache

    repo_id, _, revision = model_id.partition("@")
    cache = hf_cache_dir()
    for name in ("config.json", "model.safetensors.index.json", "model.safetensors"):
        try:
            hit = try_to_load_from_cache(repo_id, name, cache_dir=cache, revision=revision or None)
        except ValueError:  # not a valid repo id
            hit = None
        if isinstance(hit, str):
            return Path(hit).parent
    # No refs/main (e.g. copied by hand): accept a single snapshot.
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snaps = sorted(p for p in (repo / "snapshots").glob("*") if p.is_dir()) if repo.is_dir() else []
    if revision:
        matching = [p for p in snaps if p.name == revision]
        if not matching and snaps:
            raise BlackholesError(
                f"{repo_id} is in the local Hugging Face cache ({cache}) but not at revision {revision!r}; "
                f"cached: {_cached_revisions(repo, snaps)} (nothing is downloaded)"
            )
        snaps = matching
    if len(snaps) == 1:
        return snaps[0]
    if len(snaps) > 1:
        raise BlackholesError(
            f"{repo_id} has {len(snaps)} snapshots in {cache} and no refs/main; name one as "
            f"{repo_id}@<revision>: {', '.join(p.name for p in snaps)}"
        )
    raise BlackholesError(
        f"not a file or folder, and not in the local Hugging Face cache ({cache}): {model_id} "
        f"(nothing is downloaded; set HF_HUB_CACHE or HF_HOME, or pass a path)"
    )


def _cached_revisions(repo: Path, snaps: list[Path]) -> str:
    """ "snapshots abc, def; refs main -> abc" for one cached repository."""
    refs = []
    if (repo / "refs").is_dir():
        for ref in sorted(p for p in (repo / "refs").rglob("*") if p.is_file()):
            try:
                target = ref.read_text(encoding="utf-8").strip()
            except (OSError, UnicodeDecodeError):
                target = "?"
            refs.append(f"{ref.relative_to(repo / 'refs').as_posix()} -> {target}")
    text = "snapshots " + ", ".join(p.name for p in snaps)
    return text + ("; refs " + ", ".join(refs) if refs else "; no refs")


# ---------------------------------------------------------------------------- writing


def save_safetensors(path: str | os.PathLike, tensors: dict, metadata: dict[str, str] | None = None) -> None:
    """Write numpy arrays as one safetensors file, atomically; bf16 stays bf16.

    ``tensors`` maps a name to an array (its numpy dtype gives the safetensors dtype)
    or to ``(array, "BF16")`` for raw bf16 bits held as ``uint16`` (likewise the fp8
    types as ``uint8``) — which ``safetensors.numpy`` cannot write. Readable by
    ``safetensors.torch.load_file`` and by :func:`open_tensor`.

    >>> save_safetensors("mask.safetensors", {"mask": mask, "vectors": (bits, "BF16")})
    """
    from blackholes.io.atomic import atomic_path

    entries, arrays, offset = {}, [], 0
    for name, value in tensors.items():
        array, dtype = value if isinstance(value, tuple) else (value, None)
        array = np.ascontiguousarray(array)
        if dtype is None:
            dtype = SAFETENSORS_DTYPES.get(array.dtype.newbyteorder("<") if array.dtype.byteorder == ">" else array.dtype)
            if dtype is None:
                raise BlackholesError(f"cannot write numpy dtype {array.dtype} to safetensors ({name!r})")
        if STORAGE_DTYPES[dtype].itemsize != array.dtype.itemsize:
            raise BlackholesError(f"{name!r}: {array.dtype} arrays cannot hold {dtype} values")
        array = array.astype(array.dtype.newbyteorder("<"), copy=False)
        entries[name] = {"dtype": dtype, "shape": list(array.shape), "data_offsets": [offset, offset + array.nbytes]}
        arrays.append(array)
        offset += array.nbytes
    if metadata:
        entries = {"__metadata__": {str(k): str(v) for k, v in metadata.items()}, **entries}
    header = json.dumps(entries, separators=(",", ":")).encode("utf-8")
    header += b" " * (-len(header) % 8)  # align the data to 8 bytes, as safetensors does
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(header)))
        f.write(header)
        for array in arrays:
            f.write(memoryview(array.reshape(-1)).cast("B") if array.size else b"")
