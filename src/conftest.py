"""Doctests: every ``>>>`` example in the package runs under pytest, in a folder of small files.

Each doctest runs in a session-wide temporary folder that holds the files the examples
name, so an example reads like a user's call (``scan("model.safetensors")``) and is checked:

- ``model.safetensors``: ``lm_head.weight`` (F32 [64, 8], rows 8-15 one vector, rows 40-43
  another) and ``model.embed_tokens.weight`` (BF16 [64, 8]);
- ``model_dir/``: a Hugging Face folder (``config.json``, the same ``model.safetensors``,
  a 60-token ``tokenizer.json``: rows 60-63 are padding);
- ``hub/``: a Hugging Face cache (``$HF_HUB_CACHE`` points there) holding ``org/tiny``, the
  same folder at revision ``0123abcd`` with ``refs/main``;
- ``run.safetensors``: a 3-step training recording of 16 tokens (tokens 10-15 never seen,
  one point throughout), and ``corpus.txt``, the bytes it was trained on.

The names ``np``, ``Path``, ``model_file`` and ``model_dir`` are in every example's namespace.
Nothing here is installed with the package (``src/`` is not a package).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest


def _model(folder: Path) -> None:
    from blackholes.io.dtypes import bf16_from_float32
    from blackholes.io.safetensors import save_safetensors

    rng = np.random.default_rng(0)
    head = rng.standard_normal((64, 8)).astype(np.float32)
    head[8:16] = head[8]
    head[40:44] = head[40]
    embed = bf16_from_float32(rng.standard_normal((64, 8)).astype(np.float32))
    save_safetensors(folder / "model.safetensors", {"lm_head.weight": head, "model.embed_tokens.weight": (embed, "BF16")})


def _tokenizer(path: Path) -> None:
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace

    words = ["!", "the", "cat", "sat"] + [f"w{i}" for i in range(55)] + ["<|endoftext|>"]
    tok = Tokenizer(WordLevel({w: i for i, w in enumerate(words)}, unk_token="<|endoftext|>"))
    tok.pre_tokenizer = Whitespace()
    tok.add_special_tokens(["<|endoftext|>"])
    tok.save(str(path))


def _recording(folder: Path) -> None:
    from blackholes.io.safetensors import save_safetensors

    rng = np.random.default_rng(1)
    steps, vocab, dim = 3, 16, 8
    emb = np.empty((steps, vocab, dim), np.float32)
    emb[:, :10] = rng.standard_normal((steps, 10, dim))
    emb[:, 10:] = rng.standard_normal(dim)  # tokens 10-15: one point, never moving
    grads = np.zeros_like(emb)
    grads[1:, :10] = rng.standard_normal((steps - 1, 10, dim))
    logits = np.empty((steps, vocab), np.float32)
    logits[:, :10] = rng.standard_normal((steps, 10))
    logits[:, 10:] = -1.5
    meta = {"steps": json.dumps([0, 1, 2]), "never_seen": json.dumps(list(range(10, 16))),
            "sigma": "0.0", "seed": "0", "dtype": '"fp32"', "complete": "true"}
    save_safetensors(folder / "run.safetensors", {"embeddings": emb, "grads": grads, "logits": logits,
                                                  "losses": np.array([2.7, 2.6, 2.5], np.float32)}, metadata=meta)
    (folder / "corpus.txt").write_bytes(bytes(range(10)) * 20)


@pytest.fixture(scope="session")
def _doc_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("doctest")
    _model(folder)
    (folder / "model_dir").mkdir()
    _model(folder / "model_dir")
    (folder / "model_dir" / "config.json").write_text(json.dumps({"tie_word_embeddings": False}))
    _tokenizer(folder / "model_dir" / "tokenizer.json")
    snapshot = folder / "hub" / "models--org--tiny" / "snapshots" / "0123abcd"
    snapshot.parent.mkdir(parents=True)
    shutil.copytree(folder / "model_dir", snapshot)
    (folder / "hub" / "models--org--tiny" / "refs").mkdir()
    (folder / "hub" / "models--org--tiny" / "refs" / "main").write_text("0123abcd")
    _recording(folder)
    return folder


@pytest.fixture(autouse=True)
def _doctest_setup(request, doctest_namespace):
    """For doctest items only: run in the folder of example files, with the common names defined."""
    if not isinstance(request.node, pytest.DoctestItem):
        yield
        return
    folder = request.getfixturevalue("_doc_folder")
    doctest_namespace.update(np=np, Path=Path, model_file="model.safetensors", model_dir="model_dir")
    monkeypatch = request.getfixturevalue("monkeypatch")
    monkeypatch.setenv("HF_HUB_CACHE", str(folder / "hub"))
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(cwd)
