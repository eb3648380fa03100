"""`blackholes repair`: every byte outside the repaired rows identical, the repaired rows equal to the
recipe computed here with numpy, the copy loadable, and bad input refused with nothing written."""

from __future__ import annotations

import json
from pathlib import Path

import gguf
import numpy as np
import pytest
from act_helpers import HOLE, gguf_model, ollama_store, sharded, tiny_llama, tiny_llama_with_tokenizer, tree_digest
from support import assert_one_line_error, run_blackholes

from blackholes.io.dtypes import bf16_from_float32, to_float64
from blackholes.io.safetensors import read_header
from blackholes.pipelines.repair import repair
from blackholes.sources.gguf import read_gguf_header


def _rows_spans(offset: int, row_bytes: int, ids) -> list[tuple[int, int]]:
    return [(offset + i * row_bytes, offset + (i + 1) * row_bytes) for i in ids]


def assert_only_rows_changed(before: Path, after: Path, spans) -> None:
    """Byte for byte: equal everywhere but inside ``spans``."""
    a, b = bytearray(before.read_bytes()), bytearray(after.read_bytes())
    assert len(a) == len(b)
    for start, stop in spans:
        a[start:stop] = b[start:stop] = b"\0" * (stop - start)
    assert a == b


def numpy_recipe(x64: np.ndarray, ids, recipe: str, seed: int = 0) -> np.ndarray:
    keep = np.ones(len(x64), bool)
    keep[ids] = False
    if recipe == "zero":
        return np.zeros((len(ids), x64.shape[1]))
    mean = x64[keep].mean(axis=0)
    if recipe == "mean":
        return np.repeat(mean[None], len(ids), axis=0)
    c = x64[keep] - mean
    return np.random.default_rng(seed).multivariate_normal(mean, c.T @ c / keep.sum(), size=len(ids))


def _safetensors_rows(path: Path, key: str):
    info = read_header(path).tensors[key]
    raw = path.read_bytes()[info.start:info.end]
    dtype = {"F32": np.float32, "BF16": np.uint16, "F16": np.float16}[info.dtype]
    return info, np.frombuffer(raw, dtype).reshape(info.shape)


@pytest.mark.parametrize("recipe", ["mean", "mean-cov", "zero"])
def test_safetensors_folder_repaired_exactly_and_loads(tmp_path, recipe):
    torch = pytest.importorskip("torch")
    from transformers import LlamaForCausalLM

    src = tiny_llama(tmp_path / "model")
    before = tree_digest(src)
    out = tmp_path / "fixed"
    p = run_blackholes("repair", src, "--out", out, "--recipe", recipe, "--seed", "3")
    assert p.returncode == 0, p.stderr
    assert tree_digest(src) == before  # the source untouched
    weights, fixed = src / "model.safetensors", out / "model.safetensors"
    spans = []
    for key in ("model.embed_tokens.weight", "lm_head.weight"):
        info, x = _safetensors_rows(weights, key)
        _, y = _safetensors_rows(fixed, key)
        spans += _rows_spans(info.start, x.shape[1] * x.itemsize, HOLE)
        expected = numpy_recipe(to_float64(x, info.dtype), HOLE, recipe, seed=3).astype(np.float32)
        assert np.array_equal(y[HOLE].view(np.uint32), expected.view(np.uint32))
    assert_only_rows_changed(weights, fixed, spans)
    for name in before:  # every other file byte for byte
        if name != "model.safetensors":
            assert (src / name).read_bytes() == (out / name).read_bytes()
    report = json.loads((out / "repair.json").read_text())
    assert report["bytes_outside_rows_identical"] and report["rows"] == len(HOLE)
    assert report["check"]["ok"] and report["check"]["known_group"] == (recipe != "mean-cov")
    assert all(v["identical"] for v in report["unchanged_tensors"]["model.safetensors"].values())
    assert "one known group" in (out / "repair.md").read_text() or recipe == "mean-cov"
    model = LlamaForCausalLM.from_pretrained(out)  # transformers loads the repaired folder
    assert torch.equal(model.lm_head.weight[HOLE[0]], torch.from_numpy(np.array(_safetensors_rows(
        fixed, "lm_head.weight")[1][HOLE[0]])))


def test_sharded_folder_and_bf16(tmp_path):
    src = sharded(tmp_path / "sharded")
    out = tmp_path / "fixed"
    r = repair(src, out, tokens="5-7", recipe="mean")
    assert [t.key for t in r.targets] == ["model.embed_tokens.weight", "lm_head.weight"]
    assert (out / "model.safetensors.index.json").read_bytes() == (src / "model.safetensors.index.json").read_bytes()
    for shard, key in (("model-00001-of-00002.safetensors", "model.embed_tokens.weight"),
                       ("model-00002-of-00002.safetensors", "lm_head.weight")):
        info, x = _safetensors_rows(src / shard, key)
        _, y = _safetensors_rows(out / shard, key)
        assert np.array_equal(y[5:8], numpy_recipe(x.astype(np.float64), [5, 6, 7], "mean").astype(np.float32))
        assert_only_rows_changed(src / shard, out / shard, _rows_spans(info.start, 32, [5, 6, 7]))
    from blackholes.sources.load import load_matrix

    assert load_matrix(out, matrix="input").shape == (40, 8)  # the index still names valid shards

    from blackholes.io.safetensors import save_safetensors

    rng = np.random.default_rng(5)
    x = bf16_from_float32(rng.standard_normal((20, 8)).astype(np.float32))
    x[[1, 2]] = x[1]
    save_safetensors(tmp_path / "bf16.safetensors", {"embeddings": (x, "BF16")})
    r = repair(tmp_path / "bf16.safetensors", tmp_path / "bf16-fixed", tokens="holes")
    assert r.report["notes"] and "no output matrix repaired" in r.report["notes"][0]
    _, y = _safetensors_rows(tmp_path / "bf16-fixed" / "bf16.safetensors", "embeddings")
    mean = numpy_recipe(to_float64(x, "BF16"), [1, 2], "mean")
    assert np.array_equal(y[[1, 2]], bf16_from_float32(mean.astype(np.float32)))


@pytest.mark.parametrize("qtype, tied", [("F32", False), ("Q8_0", True), ("F16", True), ("BF16", True)])
def test_gguf_rows_rewritten_and_requantised(tmp_path, qtype, tied):
    src = gguf_model(tmp_path / "m.gguf", qtype, tied=tied)
    out = tmp_path / "fixed"
    r = repair(src, out, recipe="mean")
    assert r.token_ids == [3, 9, 20]
    assert [t.which for t in r.targets] == (["input+output"] if tied else ["input", "output"])
    header = read_gguf_header(src)
    spans = []
    for t in r.targets:
        tensor = header.tensors[t.key]
        rows, width = tensor.rows_width
        row_bytes = tensor.nbytes // rows
        raw = np.frombuffer(src.read_bytes()[tensor.offset:tensor.offset + tensor.nbytes], np.uint8)
        new = np.frombuffer((out / "m.gguf").read_bytes()[tensor.offset:tensor.offset + tensor.nbytes], np.uint8)
        raw, new = raw.reshape(rows, row_bytes), new.reshape(rows, row_bytes)
        qt = gguf.GGMLQuantizationType[qtype]
        x64 = gguf.quants.dequantize(raw, qt).astype(np.float64).reshape(rows, width)
        values = numpy_recipe(x64, [3, 9, 20], "mean")
        if qtype == "F16":  # plain rows: float64 cast once to the stored type
            expected = values.astype(np.float16)
        elif qtype == "BF16":
            expected = bf16_from_float32(values.astype(np.float32))
        else:  # block-quantised: gguf's own quantiser
            expected = gguf.quants.quantize(values.astype(np.float32), qt)
        assert np.array_equal(new[[3, 9, 20]], np.asarray(expected).view(np.uint8).reshape(3, row_bytes))
        spans += _rows_spans(tensor.offset, row_bytes, [3, 9, 20])
    assert_only_rows_changed(src, out / "m.gguf", spans)
    assert r.report["check"]["known_group"]


def test_ollama_model_written_as_a_new_gguf(tmp_path, monkeypatch):
    store = ollama_store(tmp_path / "store", gguf_model(tmp_path / "m.gguf", "Q8_0"))
    monkeypatch.setenv("OLLAMA_MODELS", str(store))
    before = tree_digest(store)
    out = tmp_path / "fixed"
    p = run_blackholes("repair", "ollama:tiny", "--out", out, "--recipe", "mean-cov")
    assert p.returncode == 0, p.stderr
    assert tree_digest(store) == before
    assert sorted(x.name for x in out.iterdir()) == ["repair.json", "repair.md", "tiny-latest.gguf"]
    blob = next((store / "blobs").iterdir())
    t = read_gguf_header(blob).tensors["token_embd.weight"]
    row_bytes = t.nbytes // 32
    assert_only_rows_changed(blob, out / "tiny-latest.gguf", _rows_spans(t.offset, row_bytes, [3, 9, 20]))
    report = json.loads((out / "repair.json").read_text())
    assert report["check"]["distinct"] and report["seed"] == 0
    p = run_blackholes("repair", "ollama:tiny", "--out", store / "blobs" / "x")
    assert_one_line_error(p.returncode, p.stderr, "inside the source")


def test_bad_input_one_line_and_nothing_written(tmp_path):
    src = tiny_llama(tmp_path / "model")
    other = tmp_path / "other.json"
    (tmp_path / "q4k").mkdir()
    q4k = gguf_model(tmp_path / "q4k" / "q4k.gguf", "Q4_K", raw=True, width=256)
    scan = tmp_path / "scan.json"
    assert run_blackholes("scan", src, "--json", scan, "--quiet").returncode == 0
    doc = json.loads(scan.read_text())
    other.write_text(json.dumps({**doc, "shape": [65, 16]}))
    moved = tmp_path / "moved.json"  # same shape, but its hole is not a hole of this model
    moved.write_text(json.dumps({**doc, "groups": [{"id": 1, "size": 2, "token_ids": [3, 4]}]}))
    (tmp_path / "nohole.json").write_text(json.dumps({**doc, "groups": []}))
    before = tree_digest(tmp_path)
    out = tmp_path / "fixed"
    cases = [
        ((src, "--tokens", "64"), "outside the vocabulary"),
        ((src, "--tokens", "holes", "--from", tmp_path / "nohole.json"), "is empty"),
        ((src, "--from", other), "another model"),
        ((src, "--from", moved), "another model"),
        ((src, "--tokens", "verified"), "needs a scan JSON"),
        ((src, "--tokens", "0-63"), "every row"),
        ((q4k, "--tokens", "3"), "gguf cannot write Q4_K"),
        ((src, "--recipe", "mean-cov", "--seed", "-1"), "--seed must be"),
        ((src, "--tokens", "5-3"), "end before start"),
    ]
    for argv, words in cases:
        p = run_blackholes("repair", *argv, "--out", out)
        assert_one_line_error(p.returncode, p.stderr, words)
    p = run_blackholes("repair", src, "--out", src / "fixed")
    assert_one_line_error(p.returncode, p.stderr, "inside the source")
    p = run_blackholes("repair", src, "--out", tmp_path / "q4k")
    assert_one_line_error(p.returncode, p.stderr, "not an empty folder")
    assert tree_digest(tmp_path) == before and not out.exists()
    assert not [x for x in tmp_path.iterdir() if x.name.startswith(".")]  # no temporary folder left


def test_the_readme_path_scan_repair_export(tmp_path):
    """scan -> repair -> export, as the README gives it (the holes: this scan has no verdicts)."""
    pytest.importorskip("torch")
    from transformers import AutoModelForCausalLM, GenerationConfig

    src = tiny_llama(tmp_path / "model")
    scan, out = tmp_path / "scan.json", tmp_path / "model-repaired"
    for argv in (("scan", src, "--indicators", "--json", scan),
                 ("repair", src, "--from", scan, "--tokens", "holes", "--out", out),
                 ("export", scan, "--to", "transformers", "--tokens", "holes", "--base",
                  src / "generation_config.json", "--out", out / "generation_config.json")):
        p = run_blackholes(*argv)
        assert p.returncode == 0, p.stderr
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.generation_config.suppress_tokens == HOLE
    assert GenerationConfig.from_pretrained(out).eos_token_id == 2
    rows = model.lm_head.weight.detach().numpy()[HOLE]
    assert (rows == rows[0]).all() and not (rows[0] == np.asarray(
        _safetensors_rows(src / "model.safetensors", "lm_head.weight")[1][HOLE[0]])).all()


def test_verify_before_and_after_side_by_side(tmp_path):
    pytest.importorskip("blackholes.verify")  # the verifier, when this tree has it
    pytest.importorskip("torch")
    src, hole = tiny_llama_with_tokenizer(tmp_path / "model")
    out = tmp_path / "fixed"
    p = run_blackholes("repair", src, "--out", out, "--recipe", "mean-cov", "--verify", timeout=600)
    assert p.returncode == 0, p.stderr
    v = json.loads((out / "repair.json").read_text())["verification"]
    assert [row["id"] for row in v["tokens"]] == hole
    for row in v["tokens"]:  # planted never-produced before; the recipe's rows are ordinary rows after
        assert row["before"]["verdict"] == "strong_verified" and row["before"]["max_prob"] < 1e-6
        assert row["after"]["max_prob"] > row["before"]["max_prob"]
    assert "Verified before and after" in (out / "repair.md").read_text()
    lone = tmp_path / "lone"
    p = run_blackholes("repair", src / "model.safetensors", "--out", lone, "--verify")
    assert_one_line_error(p.returncode, p.stderr, "whole model")
    assert not lone.exists()


def test_a_copy_left_by_a_killed_run_is_removed(tmp_path):
    src = sharded(tmp_path / "sharded")
    stale = tmp_path / ".fixed.999999999.x1.tmp"  # a process id no system hands out: its writer is gone
    (stale / "sub").mkdir(parents=True)
    (stale / "sub" / "model-00001-of-00002.safetensors").write_bytes(b"half")
    repair(src, tmp_path / "fixed", tokens="5")
    assert not stale.exists() and (tmp_path / "fixed" / "repair.json").is_file()
    assert not [x for x in tmp_path.iterdir() if x.name.startswith(".")]


def test_interrupted_repair_leaves_nothing(tmp_path, monkeypatch):
    """Ctrl-C (or SIGTERM, which the CLI turns into one) at the last step: no output, no temporary."""
    import blackholes.pipelines.repair_check as check

    src = sharded(tmp_path / "sharded")

    def stop(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(check, "rescan", stop)
    with pytest.raises(KeyboardInterrupt):
        repair(src, tmp_path / "fixed", tokens="5")
    assert sorted(x.name for x in tmp_path.iterdir()) == ["sharded"]


def test_the_readme_path_with_verify(tmp_path):
    """The README's three commands as written: scan --verify, repair, export of holes and verified tokens."""
    pytest.importorskip("torch")
    from transformers import AutoModelForCausalLM

    src, hole = tiny_llama_with_tokenizer(tmp_path / "model")
    scan, out = tmp_path / "scan.json", tmp_path / "model-repaired"
    p = run_blackholes("scan", src, "--indicators", "--verify", "--json", scan, timeout=600)
    if p.returncode == 2 and "--verify" in p.stderr:
        pytest.skip("this tree's scan has no --verify yet")
    assert p.returncode == 0, p.stderr
    verified = [t["id"] for t in json.loads(scan.read_text())["verification"]["tokens"] if t["max_prob"] < 0.01]
    assert set(hole) <= set(verified)
    for argv in (("repair", src, "--from", scan, "--tokens", "holes,verified", "--out", out),
                 ("export", scan, "--to", "transformers", "--tokens", "holes,verified", "--base",
                  src / "generation_config.json", "--out", out / "generation_config.json")):
        p = run_blackholes(*argv)
        assert p.returncode == 0, p.stderr
    report = json.loads((out / "repair.json").read_text())
    assert report["token_ids"] == sorted(set(hole) | set(verified)) and report["check"]["ok"]
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.generation_config.suppress_tokens == sorted(set(hole) | set(verified) - {0})  # eos 0 kept


def test_the_proof_sees_a_byte_changed_outside_the_rows(tmp_path, monkeypatch):
    """compare() counts only the differences outside the repaired rows, across block edges; a repair whose
    copy differs anywhere else is refused and leaves nothing."""
    import blackholes.pipelines.repair_check as check

    monkeypatch.setattr(check, "BLOCK", 64)  # many blocks, spans across their edges
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, 1000, dtype=np.uint8)
    b = a.copy()
    spans = np.array([[60, 70], [130, 300], [900, 1000]], np.int64)
    b[[60, 69, 130, 200, 299, 999]] ^= 1  # inside the spans
    (tmp_path / "a").write_bytes(a.tobytes())
    (tmp_path / "b").write_bytes(b.tobytes())
    outside, digests = check.compare(tmp_path / "a", tmp_path / "b", {}, spans)
    assert outside == 0 and digests[""][0] != digests[""][1]
    b[[59, 70, 129, 300, 899]] ^= 1  # just outside each edge
    (tmp_path / "b").write_bytes(b.tobytes())
    assert check.compare(tmp_path / "a", tmp_path / "b", {"t": (0, 500)}, spans)[0] == 5

    import blackholes.pipelines.repair as rp

    src = sharded(tmp_path / "sharded")
    write = rp.write_copy

    def tamper(p, tmp, ids, rows):
        write(p, tmp, ids, rows)
        with open(tmp / "model-00001-of-00002.safetensors", "r+b") as f:
            f.seek(-1, 2)  # the last byte of model.norm.weight: not a repaired row
            last = f.read(1)
            f.seek(-1, 2)
            f.write(bytes([last[0] ^ 1]))

    monkeypatch.setattr(rp, "write_copy", tamper)
    with pytest.raises(Exception, match="differs from the source outside the repaired rows"):
        repair(src, tmp_path / "fixed", tokens="5")
    assert not (tmp_path / "fixed").exists()
