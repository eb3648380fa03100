"""`blackholes export`: each format read back by its consumer's own loader (or as the consumer
documents it where the consumer cannot be installed here), and bad input refused in one line."""

from __future__ import annotations

import json
import re
import shlex

import pytest
from act_helpers import HOLE, tiny_llama, tree_digest
from support import assert_one_line_error, run_blackholes

from blackholes.io.atomic import write_json
from blackholes.pipelines.export import export

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    """(model folder, its scan JSON): holes at rows 10-15 of both matrices."""
    folder = tiny_llama(tmp_path_factory.mktemp("llama") / "model")
    scan = folder.parent / "scan.json"
    p = run_blackholes("scan", folder, "--matrix", "both", "--json", scan, "--quiet")
    assert p.returncode == 0, p.stderr
    return folder, scan


def _scan_doc(tmp_path, groups, rows=64, **extra):
    path = tmp_path / "built-scan.json"
    write_json(path, {"source": "built", "path": None, "key": "lm_head.weight", "shape": [rows, 16],
                      "dtype": "F32", "groups": groups, **extra})
    return path


def test_transformers_config_suppresses_the_hole_in_generation(llama, tmp_path):
    from transformers import GenerationConfig, LlamaForCausalLM

    folder, scan = llama
    out = tmp_path / "generation_config.json"
    base = folder / "generation_config.json"
    before = base.read_bytes()
    p = run_blackholes("export", scan, "--to", "transformers", "--out", out, "--base", base)
    assert p.returncode == 0, p.stderr
    assert base.read_bytes() == before  # merged into a copy, never in place
    config = GenerationConfig.from_pretrained(tmp_path)
    assert config.suppress_tokens == HOLE and config.eos_token_id == 2  # the base's fields kept
    model = LlamaForCausalLM.from_pretrained(folder).eval()
    prompt = torch.tensor([[1, 30, 31]])
    plain = model.generate(prompt, max_new_tokens=6, do_sample=False, eos_token_id=None, pad_token_id=0)
    assert set(plain[0, 3:].tolist()) == {HOLE[0]}  # without the mask the hole is the argmax every time
    masked = model.generate(prompt, generation_config=config, max_new_tokens=6, do_sample=False)
    new = masked[0, 3:].tolist()
    assert new and not set(new) & set(HOLE)


def test_llama_cpp_arguments_and_server_json_parse_back(llama, tmp_path):
    folder, scan = llama
    out = tmp_path / "dead.args"
    p = run_blackholes("export", scan, "--to", "llama.cpp", "--out", out)
    assert p.returncode == 0, p.stderr
    argv = shlex.split(out.read_text())
    biases = {}
    for flag, value in zip(argv[::2], argv[1::2]):  # as common/arg.cpp reads it: int, sign, float (stof)
        assert flag == "--logit-bias"
        token, sign, bias = re.fullmatch(r"(\d+)([+-])(.+)", value).groups()
        biases[int(token)] = float(bias) * (-1 if sign == "-" else 1)
    assert biases == {i: float("-inf") for i in HOLE}
    server = json.loads((tmp_path / "dead.server.json").read_text())
    # llama-server: a list of [token, bias] pairs, bias false = never produced
    assert [(t, b) for t, b in server["logit_bias"]] == [(i, False) for i in HOLE]


def test_vllm_logit_bias_shape(llama, tmp_path):
    folder, scan = llama
    out = tmp_path / "bias.json"
    assert run_blackholes("export", scan, "--to", "vllm", "--out", out).returncode == 0
    doc = json.loads(out.read_text())
    assert list(doc) == ["logit_bias"]
    bias = {int(k): v for k, v in doc["logit_bias"].items()}  # SamplingParams(logit_bias: dict[int, float])
    assert bias == {i: -100.0 for i in HOLE} and all(isinstance(v, float) for v in bias.values())
    try:
        from vllm import SamplingParams
    except ImportError:
        return  # vLLM cannot be installed here (it needs its own torch build); the shape above is its API's
    assert SamplingParams(logit_bias=bias).logit_bias == bias


def test_ids_and_combined_sets_with_verdicts(tmp_path):
    tokens = [{"id": 3, "text": "a", "max_prob": 0.001, "verdict": "never", "probs": [], "encodable": True},
              {"id": 4, "text": "b", "max_prob": 0.5, "verdict": "produced", "probs": [], "encodable": True},
              {"id": 40, "text": "c", "max_prob": 0.0099, "verdict": "never", "probs": [], "encodable": True}]
    scan = _scan_doc(tmp_path, [{"id": 1, "size": 2, "token_ids": [7, 8]}], verification={"tokens": tokens})
    r = export(scan, to="ids", out=tmp_path / "ids.json", tokens="holes,verified")
    assert json.loads((tmp_path / "ids.json").read_text()) == [3, 7, 8, 40] == r.tokens
    assert r.sets == {"holes": 2, "verified": 2}
    assert "token categories only" in r.notes[0]  # a scan naming no model file here says so
    r = export(scan, to="ids", out=tmp_path / "v.json", tokens="verified,50")
    assert r.tokens == [3, 40, 50]


def test_chat_template_tokens_are_kept_unless_named(tmp_path):
    folder = tiny_llama(tmp_path / "model", eos_in_hole=True)
    scan = tmp_path / "scan.json"
    assert run_blackholes("scan", folder, "--json", scan, "--quiet").returncode == 0
    p = run_blackholes("export", scan, "--to", "ids", "--out", tmp_path / "a.json")
    assert p.returncode == 0, p.stderr
    assert json.loads((tmp_path / "a.json").read_text()) == HOLE
    assert "kept 2: eos_token_id in generation_config.json" in p.stdout
    r = export(scan, to="ids", out=tmp_path / "b.json", tokens="holes,2", keep=["11"])
    assert r.tokens == [2, 10] + HOLE[2:] and r.kept == {11: "--keep"}


def test_bad_input_one_line_and_nothing_written(llama, tmp_path):
    folder, scan = llama
    out = tmp_path / "x.json"
    cases = [
        (("--tokens", "70"), "outside the vocabulary"),
        (("--tokens", "verified"), "carries no verdicts"),
        (("--tokens", "holes", "--keep", *map(str, HOLE)), "is empty"),
        (("--tokens", "wombats"), "unknown token set"),
    ]
    before = tree_digest(tmp_path)
    for extra, words in cases:
        p = run_blackholes("export", scan, "--to", "ids", "--out", out, *extra)
        assert_one_line_error(p.returncode, p.stderr, words)
    p = run_blackholes("export", scan, "--to", "ids", "--out", scan)
    assert_one_line_error(p.returncode, p.stderr, "is an input")
    empty = _scan_doc(tmp_path, [])
    p = run_blackholes("export", empty, "--to", "vllm", "--out", out)
    assert_one_line_error(p.returncode, p.stderr, "is empty")
    (tmp_path / "bad.json").write_text("[" * 500 + "]" * 500)
    p = run_blackholes("export", tmp_path / "bad.json", "--to", "vllm", "--out", out)
    assert_one_line_error(p.returncode, p.stderr, "nested deeper")
    assert not out.exists()
    assert {k for k in tree_digest(tmp_path)} - set(before) == {"built-scan.json", "bad.json"}


def test_gguf_chat_template_tokens_from_its_metadata(tmp_path):
    from act_helpers import gguf_model

    model = gguf_model(tmp_path / "m.gguf", "Q8_0")
    scan = tmp_path / "scan.json"
    assert run_blackholes("scan", model, "--json", scan, "--quiet").returncode == 0
    doc = json.loads(scan.read_text())
    doc["groups"][0]["token_ids"] = [2, 3, 9, 20]  # as if the end-of-text token were in the hole
    write_json(scan, doc)
    r = export(scan, to="llama.cpp", out=tmp_path / "dead.args")
    assert r.tokens == [3, 9, 20] and r.kept == {2: "tokenizer.ggml.eos_token_id in m.gguf"}
    assert (tmp_path / "dead.args").read_text().split() == ["--logit-bias", "3-inf", "--logit-bias", "9-inf",
                                                            "--logit-bias", "20-inf"]
