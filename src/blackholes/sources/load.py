"""``load_matrix``: from anything a user names to one memory-mapped :class:`Matrix`."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from blackholes.errors import BlackholesError
from blackholes.io.dtypes import NAMED_DTYPES, SAFETENSORS_DTYPES, STORAGE_DTYPES
from blackholes.io.paths import input_file
from blackholes.sources.hf_cache import cached_snapshot, looks_like_model_id
from blackholes.sources.local import load_file, load_folder
from blackholes.sources.matrix import Matrix


def load_matrix(source: str | os.PathLike, key: str | None = None, matrix: str | None = None,
                step: int | None = None, *, cache: str | os.PathLike | None = None, progress: bool = False) -> Matrix:
    """Find and memory-map one embedding matrix; read no other tensor's bytes.

    ``source`` is a ``.safetensors`` file, a Hugging Face model folder (``config.json``
    with ``model.safetensors`` or a sharded ``model.safetensors.index.json``), a model
    id (``org/name``, optionally ``org/name@revision``) already in the local Hugging Face
    cache, a GGUF file (any shard of a split one), ``ollama:NAME[:TAG]`` from the local
    Ollama store, or a remote safetensors file or model folder (``https://...``,
    ``hf://org/name[@rev]``, any fsspec URL), of which only the header and the one tensor's
    bytes are fetched (kept under ``cache`` if given; ``progress`` shows a bar). ``key`` names the tensor; otherwise ``matrix`` ("input" or "output",
    default "output" — the input embedding when the model ties them) picks a well-known
    name. A training recording (from ``blackholes train``) gives its embeddings at
    ``step`` (default: the last recorded step).

    >>> m = load_matrix("org/tiny")                   # in the local Hugging Face cache, offline
    >>> m.key, m.shape, m.dtype
    ('lm_head.weight', (64, 8), 'F32')
    >>> load_matrix("model.safetensors", key="model.embed_tokens.weight").dtype
    'BF16'
    >>> load_matrix("run.safetensors").note               # a training recording: its last step
    'training recording: the embeddings at step 2 (the last recorded)'
    """
    if matrix not in (None, "input", "output"):
        raise BlackholesError(f"matrix must be 'input' or 'output', not {matrix!r}")
    text = os.fspath(source)
    if not text.strip():
        raise BlackholesError("no model given: the source is empty (an unset variable?)")
    m = _load(text, key, matrix, step, cache, progress)
    if step is not None and not m.key.startswith("embeddings["):
        raise BlackholesError(f"--step picks a step of a training recording; {text} is not one")
    m.source = text
    return m


def _load(text: str, key, matrix, step, cache, progress) -> Matrix:
    """Dispatch on what ``text`` names: Ollama, a URL, a folder, a file (GGUF by its magic), a cached id."""
    from blackholes.sources.remote import is_remote

    if text.startswith("file://"):  # a local file named as a URL: read (and protected) as the local file it is
        from urllib.parse import urlsplit
        from urllib.request import url2pathname

        text = url2pathname(urlsplit(text).path) or "/"
    if is_remote(text):
        from blackholes.sources.remote import load_remote

        return load_remote(text, key, matrix, cache=cache, progress=progress)
    if text.startswith("ollama:"):
        from blackholes.sources.ollama import load_ollama

        return load_ollama(text, key, matrix)
    path = Path(text).expanduser()
    if path.is_dir():
        gguf = _lone_gguf(path)
        return _load_gguf(gguf, key, matrix) if gguf is not None else load_folder(path, key, matrix)
    if path.exists():
        path = input_file(path)
        return _load_gguf(path, key, matrix) if is_gguf(path) else load_file(path, key, matrix, step)
    if looks_like_model_id(text):
        snapshot = cached_snapshot(text)
        gguf = _lone_gguf(snapshot)
        return _load_gguf(gguf, key, matrix) if gguf is not None else load_folder(snapshot, key, matrix)
    raise BlackholesError(f"no such file or directory: {text}")


def is_gguf(path: Path) -> bool:
    """Whether a file starts with GGUF's magic (Ollama's blobs have no suffix to go by)."""
    with open(path, "rb") as f:
        return f.read(4) == b"GGUF"


def _lone_gguf(folder: Path) -> Path | None:
    """The GGUF model of a folder holding no safetensors weights: its only file (or first shard)."""
    if any(folder.glob("*.safetensors")):
        return None
    found = sorted(folder.glob("*.gguf"))
    firsts = [p for p in found if "-00001-of-" in p.name] or found
    return firsts[0] if len(firsts) == 1 else None


def _load_gguf(path: Path, key, matrix) -> Matrix:
    from blackholes.sources.gguf import load_gguf

    return load_gguf(path, key, matrix)


def as_matrix(source, *, key=None, matrix=None, dtype=None) -> Matrix:
    """A :class:`Matrix` from a Matrix, a path or model id (:func:`load_matrix`), a torch tensor
    or a 2-D numpy array (``dtype`` names its safetensors dtype, e.g. ``"BF16"`` for uint16 bits).

    >>> as_matrix(np.zeros((3, 2), np.float16)).dtype
    'F16'
    """
    if isinstance(source, Matrix):
        return source
    if isinstance(source, (str, os.PathLike)):
        return load_matrix(source, key=key, matrix=matrix)
    if hasattr(source, "detach") and hasattr(source, "dtype"):  # a torch tensor, without importing torch
        t = source.detach().cpu()
        name = str(t.dtype).replace("torch.", "")
        if name in NAMED_DTYPES:
            import torch  # only reached when the caller already has torch

            bits = t.contiguous().view(torch.int16 if name == "bfloat16" else torch.int8).numpy()
            array = bits.view(np.uint16 if name == "bfloat16" else np.uint8)
            dtype = dtype or NAMED_DTYPES[name]
        else:
            array = t.numpy()
    else:
        array = source
    if not isinstance(array, np.ndarray):
        raise BlackholesError(f"cannot scan a {type(source).__name__}; pass a path, a model id or a 2-D array")
    if dtype is None:
        if array.dtype.name in NAMED_DTYPES:  # ml_dtypes bfloat16 / fp8 arrays
            dtype = NAMED_DTYPES[array.dtype.name]
            array = array.view(STORAGE_DTYPES[dtype])
        else:
            dtype = SAFETENSORS_DTYPES.get(array.dtype.newbyteorder("<"))
            if dtype is None:
                raise BlackholesError(f"unsupported array dtype {array.dtype}; pass dtype=")
    elif dtype not in STORAGE_DTYPES:
        raise BlackholesError(f"unknown dtype {dtype!r}; one of {', '.join(STORAGE_DTYPES)}")
    elif STORAGE_DTYPES[dtype].itemsize != array.dtype.itemsize:
        raise BlackholesError(f"a {array.dtype} array cannot hold {dtype} values")
    if array.ndim != 2:
        raise BlackholesError(f"expected a 2-D [vocab, dim] matrix, got shape {list(array.shape)}")
    if array.size == 0:
        raise BlackholesError(f"the matrix is empty (shape {list(array.shape)})")
    return Matrix(array=array, dtype=dtype, source="<array>", path=None, key="<array>", format="array")
