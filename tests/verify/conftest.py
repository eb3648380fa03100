"""The tiny planted LM of tests/tiny_lm.py, built once per session in the forms users have it."""

from __future__ import annotations

import hashlib
import json

import pytest

pytest.importorskip("transformers")


@pytest.fixture(scope="session")
def lm(tmp_path_factory):
    """Paths of one model: folder (single safetensors), sharded folder, GGUF file, an Ollama store holding the
    GGUF, and the planted (dead, copy) ids."""
    import tiny_lm

    root = tmp_path_factory.mktemp("lm")
    folder = tiny_lm.save_model(root / "model")
    sharded = tiny_lm.save_model(root / "sharded", shard="40KB")
    gguf = tiny_lm.write_gguf(folder, root / "gguf" / "tiny.gguf") if (root / "gguf").mkdir() is None else None
    store = root / "ollama"
    data = gguf.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    (store / "blobs").mkdir(parents=True)
    (store / "blobs" / f"sha256-{digest}").write_bytes(data)
    manifest = store / "manifests" / "registry.ollama.ai" / "library" / "tiny" / "latest"
    manifest.parent.mkdir(parents=True)
    layer = {"mediaType": "application/vnd.ollama.image.model", "digest": f"sha256:{digest}", "size": len(data)}
    manifest.write_text(json.dumps({"schemaVersion": 2, "layers": [layer]}))
    dead, copy = tiny_lm.planted_ids(tiny_lm.train_tokenizer())
    return {"folder": folder, "sharded": sharded, "gguf": gguf, "ollama": store, "dead": dead, "copy": copy}
