"""``load_matrix``: from anything a user names to one memory-mapped :class:`Matrix`."""

from __future__ import annotations

import os
from pathlib import Path

from blackholes.errors import BlackholesError
from blackholes.sources.hf_cache import cached_snapshot, looks_like_model_id
from blackholes.sources.local import load_file, load_folder
from blackholes.sources.matrix import Matrix


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
        m = load_folder(path, key, matrix)
    elif path.exists():
        m = load_file(path, key, matrix)
    elif looks_like_model_id(text):
        m = load_folder(cached_snapshot(text), key, matrix)
    else:
        raise BlackholesError(f"no such file or directory: {text}")
    m.source = text
    return m
