"""Every form of one model gives the same verdicts: a folder, a sharded folder, a cached id, a GGUF file (through
transformers' GGUF loading) and the same GGUF in an Ollama store."""

from __future__ import annotations

import shutil

import pytest

from blackholes.verify import verify


def _answers(v):
    return [(t.id, t.verdict, round(t.max_prob, 6)) for t in v.tokens]


@pytest.fixture(scope="module")
def tokens(lm):
    return lm["dead"][:3] + lm["copy"][:3] + [77, 150]


@pytest.fixture(scope="module")
def expected(lm, tokens):
    return _answers(verify(str(lm["folder"]), tokens, device="cpu", progress=False))


@pytest.mark.parametrize("form", ["sharded", "gguf", "ollama"])
def test_every_form_of_the_model_gives_the_same_verdicts(lm, tokens, expected, form, monkeypatch):
    source = str(lm[form])
    if form == "ollama":
        monkeypatch.setenv("OLLAMA_MODELS", str(lm["ollama"]))
        source = "ollama:tiny"
    v = verify(source, tokens, device="cpu", progress=False)
    assert _answers(v) == expected
    assert [t.verdict for t in v.tokens[:3]] == ["strong_verified"] * 3 or v.tokens[0].id not in lm["dead"]


def test_a_model_id_in_the_hugging_face_cache(lm, tokens, expected, tmp_path, monkeypatch):
    snapshot = tmp_path / "hub" / "models--org--tiny" / "snapshots" / "abc123"
    shutil.copytree(lm["folder"], snapshot)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    assert _answers(verify("org/tiny", tokens, device="cpu", progress=False)) == expected


def test_hf_url_downloads_the_model_from_the_hub(lm, tokens, expected, tmp_path, monkeypatch):
    """hf://org/name through huggingface_hub, against the tests' local Hub server (never the real Hub)."""
    import importlib.util
    from pathlib import Path

    import sys

    spec = importlib.util.spec_from_file_location("bh_test_http_server", Path(__file__).parents[1] / "sources" /
                                                  "http_server.py")
    hs = sys.modules.get(spec.name)
    if hs is None:
        hs = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = hs  # dataclasses look their module up while the class is made
        spec.loader.exec_module(hs)
    for name in ("HF_TOKEN", "HF_HUB_OFFLINE", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_CACHE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    with hs.serve(lm["folder"], hub="org/tiny") as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url.rstrip("/"))
        v = verify("hf://org/tiny", tokens, device="cpu", progress=False)
    assert _answers(v) == expected
    assert any((tmp_path / "hf-home" / "hub").rglob("model.safetensors"))
