"""Ollama sources: a model store built in a temporary folder from a GGUF file written here."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import gguf
import numpy as np
import pytest

from blackholes.analysis.exact import find_groups
from blackholes.errors import BlackholesError
from blackholes.sources.ollama import (
    MODEL_MEDIA_TYPE,
    list_ollama_models,
    load_ollama,
    ollama_store,
    parse_ollama_name,
    resolve_ollama,
)


def tiny_gguf(path: Path) -> Path:
    """A tied Q8_0 model with 16 tokens; rows 2, 7 and 11 are identical."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((16, 64)).astype(np.float32)
    x[[7, 11]] = x[2]
    w = gguf.GGUFWriter(path, "llama")
    w.add_tokenizer_model("llama")
    w.add_token_list([f"\u2581t{i}" for i in range(16)])
    w.add_token_types([1] * 16)
    w.add_tensor("token_embd.weight", gguf.quants.quantize(x, gguf.GGMLQuantizationType.Q8_0),
                 raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
    return path


def add_model(store: Path, gguf_file: Path, *parts: str, layers=None, size_delta: int = 0) -> str:
    """Put gguf_file in the store as registry/namespace/name/tag; returns the blob's digest."""
    data = gguf_file.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    (store / "blobs").mkdir(parents=True, exist_ok=True)
    (store / "blobs" / f"sha256-{digest}").write_bytes(data)
    config = {"mediaType": "application/vnd.docker.container.image.v1+json", "digest": "sha256:" + "0" * 64, "size": 2}
    if layers is None:
        layers = [{"mediaType": "application/vnd.ollama.image.template", "digest": "sha256:" + "1" * 64, "size": 9},
                  {"mediaType": MODEL_MEDIA_TYPE, "digest": f"sha256:{digest}", "size": len(data) + size_delta},
                  {"mediaType": "application/vnd.ollama.image.params", "digest": "sha256:" + "2" * 64, "size": 3}]
    manifest = store / "manifests" / Path(*parts)
    manifest.parent.mkdir(parents=True, exist_ok=True)
    manifest.write_text(json.dumps({"schemaVersion": 2, "config": config, "layers": layers}))
    return digest


@pytest.fixture
def store(tmp_path) -> tuple[Path, str]:
    root = tmp_path / "models"
    model = tiny_gguf(tmp_path / "tiny.gguf")
    digest = add_model(root, model, "registry.ollama.ai", "library", "tiny", "latest")
    add_model(root, model, "registry.ollama.ai", "library", "tiny", "q8_0")
    add_model(root, model, "registry.ollama.ai", "someone", "tiny", "v2")
    add_model(root, model, "hf.co", "bartowski", "Tiny-GGUF", "Q8_0")
    return root, digest


def one_line_error(call) -> str:
    with pytest.raises(BlackholesError) as info:
        call()
    message = str(info.value)
    assert message and "\n" not in message
    return message


@pytest.mark.parametrize("name, parts", [
    ("ollama:smollm2:135m", ("registry.ollama.ai", "library", "smollm2", "135m")),
    ("ollama:smollm2", ("registry.ollama.ai", "library", "smollm2", "latest")),
    ("ollama:someone/model:v2", ("registry.ollama.ai", "someone", "model", "v2")),
    ("ollama:hf.co/bartowski/Qwen3-4B-GGUF:Q4_K_M", ("hf.co", "bartowski", "Qwen3-4B-GGUF", "Q4_K_M")),
    ("ollama:localhost:5000/ns/m:t", ("localhost:5000", "ns", "m", "t")),
    ("smollm2:135m", ("registry.ollama.ai", "library", "smollm2", "135m")),
])
def test_names_are_parsed_with_ollamas_defaults(name, parts):
    assert parse_ollama_name(name) == parts


@pytest.mark.parametrize("name", ["ollama:", "ollama::tag", "ollama:a/b/c/d", "ollama:../x", "ollama:a/../b",
                                  "ollama:x:..", "ollama:a//b", "ollama:m:t:u"])
def test_bad_names_are_refused_and_never_leave_the_store(name):
    assert "ollama:NAME" in one_line_error(lambda: parse_ollama_name(name))


def test_every_name_form_resolves_to_the_blob(store):
    root, digest = store
    blob = root / "blobs" / f"sha256-{digest}"
    for name in ("ollama:tiny", "ollama:tiny:latest", "ollama:tiny:q8_0", "ollama:someone/tiny:v2",
                 "ollama:registry.ollama.ai/library/tiny:latest", "ollama:hf.co/bartowski/Tiny-GGUF:Q8_0"):
        assert resolve_ollama(name, root) == (blob, digest)
    assert resolve_ollama("ollama:tiny", root, verify=True) == (blob, digest)


def test_the_store_comes_from_ollama_models_else_the_home_folder(store, monkeypatch, tmp_path):
    root, digest = store
    monkeypatch.setenv("OLLAMA_MODELS", str(root))
    assert ollama_store() == root and resolve_ollama("ollama:tiny")[1] == digest
    monkeypatch.delenv("OLLAMA_MODELS")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert ollama_store() == tmp_path / "home" / ".ollama" / "models"
    assert "no Ollama model store" in one_line_error(lambda: resolve_ollama("ollama:tiny"))
    (tmp_path / "home" / ".ollama").mkdir(parents=True)
    (tmp_path / "home" / ".ollama" / "models").symlink_to(root)
    assert resolve_ollama("ollama:tiny")[1] == digest


def test_models_are_listed_as_ollama_prints_them(store, tmp_path):
    root, _ = store
    assert list_ollama_models(root) == ["hf.co/bartowski/Tiny-GGUF:Q8_0", "someone/tiny:v2", "tiny:latest", "tiny:q8_0"]
    assert list_ollama_models(tmp_path / "nowhere") == []


def test_load_ollama_scans_the_blob_as_gguf(store):
    root, digest = store
    m = load_ollama("ollama:tiny:q8_0", store=root)
    assert (m.source, m.revision, m.format, m.key, m.dtype, m.quantization) == (
        "ollama:tiny:q8_0", f"sha256:{digest}", "gguf", "token_embd.weight", "Q8_0", "Q8_0")
    assert m.path == root / "blobs" / f"sha256-{digest}" and m.tied is True and m.shape == (16, 64)
    assert [g.tolist() for g in find_groups(m.array)] == [[2, 7, 11]]
    assert m.vocabulary.text[7] == " t7"
    assert load_ollama("ollama:tiny", matrix="input", store=root).key == "token_embd.weight"


def test_a_missing_model_lists_the_models_there(store):
    root, _ = store
    message = one_line_error(lambda: resolve_ollama("ollama:smollm2:135m", root))
    assert "smollm2:135m" in message and "tiny:latest" in message and "someone/tiny:v2" in message
    empty = root.parent / "empty"
    (empty / "manifests").mkdir(parents=True)
    assert "(none)" in one_line_error(lambda: resolve_ollama("ollama:tiny", empty))


def test_bad_manifests_and_blobs_are_one_clear_line(store, tmp_path):
    root, digest = store
    model = tmp_path / "tiny.gguf"
    add_model(root, model, "registry.ollama.ai", "library", "nolayer", "latest",
              layers=[{"mediaType": "application/vnd.ollama.image.license", "digest": "sha256:" + "3" * 64}])
    assert "no model layer" in one_line_error(lambda: resolve_ollama("ollama:nolayer", root))
    add_model(root, model, "registry.ollama.ai", "library", "baddigest", "latest",
              layers=[{"mediaType": MODEL_MEDIA_TYPE, "digest": "md5:abc", "size": 1}])
    assert "sha256:<hex>" in one_line_error(lambda: resolve_ollama("ollama:baddigest", root))
    (root / "manifests" / "registry.ollama.ai" / "library" / "tiny" / "broken").write_text("{not json")
    assert "cannot read Ollama manifest" in one_line_error(lambda: resolve_ollama("ollama:tiny:broken", root))
    (root / "manifests" / "registry.ollama.ai" / "library" / "tiny" / "nolayers").write_text("[]")
    assert "no list of layers" in one_line_error(lambda: resolve_ollama("ollama:tiny:nolayers", root))
    add_model(root, model, "registry.ollama.ai", "library", "short", "latest", size_delta=5)
    assert "the manifest says" in one_line_error(lambda: resolve_ollama("ollama:short", root))

    blob = root / "blobs" / f"sha256-{digest}"
    data = bytearray(blob.read_bytes())
    data[-1] ^= 1
    blob.write_bytes(bytes(data))
    assert resolve_ollama("ollama:tiny", root)[1] == digest  # not hashed by default: size only
    assert "does not hash" in one_line_error(lambda: resolve_ollama("ollama:tiny", root, verify=True))
    blob.unlink()
    assert f"sha256-{digest}" in one_line_error(lambda: resolve_ollama("ollama:tiny", root))
    assert "sha256-" in one_line_error(lambda: load_ollama("ollama:tiny", store=root))


def test_a_blob_that_is_not_gguf_is_one_clear_line(store, tmp_path):
    root, _ = store
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"PK\x03\x04" + bytes(100))
    add_model(root, junk, "registry.ollama.ai", "library", "junk", "latest")
    assert "magic" in one_line_error(lambda: load_ollama("ollama:junk", store=root))
