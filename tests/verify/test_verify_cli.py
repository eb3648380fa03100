"""``blackholes verify`` and ``scan --verify`` through the real CLI: JSON names, resuming, Ctrl-C, bad input."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time

import pytest

from support import assert_one_line_error, run_blackholes


def test_verify_writes_the_verification_section(lm, tmp_path):
    out = tmp_path / "v.json"
    ids = f"{lm['dead'][0]},{lm['copy'][0]},77"
    p = run_blackholes("verify", lm["folder"], "--tokens", ids, "--json", out, "--device", "cpu")
    assert p.returncode == 0, p.stderr
    doc = json.loads(out.read_text())["verification"]
    assert {"method", "model", "dtype", "thresholds", "placeholder", "seconds", "tokens"} <= set(doc)
    assert doc["method"] == "magikarp" and doc["dtype"] == "float32" and doc["complete"] is True
    assert doc["thresholds"] == {"strong_rejected": 0.9, "weak_rejected": 0.1, "strong_verified": 0.001,
                                 "verified": 0.01}
    rows = {t["id"]: t for t in doc["tokens"]}
    assert set(rows) == {lm["dead"][0], lm["copy"][0], 77}
    for t in rows.values():
        assert set(t) == {"id", "text", "max_prob", "verdict", "probs", "encodable"}
        assert set(t["probs"]) == {"input_output", "assistant_explain", "repeats"}
    assert rows[lm["dead"][0]]["verdict"] == "strong_verified"
    assert rows[lm["copy"][0]]["verdict"] == "strong_rejected"
    assert "Verified (magikarp" in p.stdout
    # Resumable: the verdicts are in v.jsonl; a second run reads them back and computes nothing new.
    store = tmp_path / "v.jsonl"
    lines = store.read_text().splitlines()
    assert len(lines) == 4
    again = run_blackholes("verify", lm["folder"], "--tokens", ids, "--json", out, "--device", "cpu")
    assert again.returncode == 0 and store.read_text().splitlines() == lines
    assert json.loads(out.read_text())["verification"]["tokens"] == doc["tokens"]


@pytest.mark.parametrize("sig, status, words", [(signal.SIGINT, 130, "interrupted"),
                                                (signal.SIGTERM, 143, "terminated (SIGTERM)")])
def test_ctrl_c_keeps_the_verdicts_done_so_far(lm, tmp_path, sig, status, words):
    out, store = tmp_path / "v.json", tmp_path / "v.jsonl"
    cmd = [sys.executable, "-m", "blackholes", "verify", str(lm["folder"]), "--tokens", "0-199", "--batch-size",
           "2", "--json", str(out), "--device", "cpu", "--quiet"]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while time.time() < deadline and (not store.exists() or len(store.read_text().splitlines()) < 3):
        time.sleep(0.2)
    p.send_signal(sig)
    _, err = p.communicate(timeout=120)
    assert p.returncode == status, err
    assert "interrupted" in err or sig != signal.SIGINT
    assert "Traceback" not in err
    stops = [line for line in err.splitlines() if line.startswith("blackholes:")]
    assert stops == [line for line in stops if line.startswith(f"blackholes: {words}: ")] and len(stops) == 1
    kept = len(store.read_text().splitlines()) - 1
    doc = json.loads(out.read_text())["verification"]
    assert doc["complete"] is False and len(doc["tokens"]) == kept and 2 <= kept < 200


def test_verify_from_a_scan_report(lm, tmp_path):
    scan = tmp_path / "scan.json"
    p = run_blackholes("scan", lm["folder"], "--indicators", "--json", scan, "--quiet")
    assert p.returncode == 0, p.stderr
    report = json.loads(scan.read_text())
    holes = sorted(t for g in report["groups"] for t in g["token_ids"])
    assert holes == sorted(lm["dead"])  # their output rows were planted identical
    out = tmp_path / "v.json"
    p = run_blackholes("verify", lm["folder"], "--from", scan, "--which", "holes", "--json", out, "--device", "cpu")
    assert p.returncode == 0, p.stderr
    doc = json.loads(out.read_text())["verification"]
    assert [t["id"] for t in doc["tokens"]] == holes
    assert {t["verdict"] for t in doc["tokens"]} == {"strong_verified"}


def _no_head(lm, folder):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(lm["folder"])
    model.model.save_pretrained(folder)  # the base model alone: no lm_head.weight, output untied
    config = json.loads((folder / "config.json").read_text())
    config["architectures"] = ["LlamaForCausalLM"]
    (folder / "config.json").write_text(json.dumps(config))
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(lm["folder"] / name, folder / name)
    return folder


def _too_large(folder):
    """A folder whose safetensors header promises 2^36 float32 values (a sparse file: no disk used)."""
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "llama", "architectures": ["LlamaForCausalLM"]}))
    n = 1 << 36
    header = json.dumps({"lm_head.weight": {"dtype": "F32", "shape": [1 << 20, 1 << 16],
                                             "data_offsets": [0, n * 4]}}).encode()
    header += b" " * (-len(header) % 8)
    with open(folder / "model.safetensors", "wb") as f:
        f.write(len(header).to_bytes(8, "little") + header)
        f.truncate(8 + len(header) + n * 4)
    return folder


def test_bad_input_is_one_line(lm, tmp_path, capsys):
    """The CLI's own main() in this process (what `python -m blackholes` calls): each refusal is one line,
    without paying a fresh interpreter's torch and transformers imports seven times."""
    from blackholes.cli import main

    no_tok = tmp_path / "no_tokenizer"
    shutil.copytree(lm["folder"], no_tok, ignore=shutil.ignore_patterns("tokenizer*"))
    cases = [
        (["verify", lm["folder"], "--tokens", "5,9999"], "out of range"),
        (["verify", no_tok, "--tokens", "5"], "no tokenizer"),
        (["verify", _no_head(lm, tmp_path / "no_head"), "--tokens", "5"], "no language-model head"),
        (["verify", _too_large(tmp_path / "huge"), "--tokens", "5"], "model too large"),
        (["verify", lm["folder"], "--tokens", "5", "--device", "cuda"], "no CUDA device"),
        (["verify", lm["folder"] / "model.safetensors", "--tokens", "5"], "whole model"),
        (["verify", lm["folder"], "--tokens", "5", "--dtype", "int3"], "--dtype"),
    ]
    for argv, words in cases:
        if words == "no CUDA device":
            import torch

            if torch.cuda.is_available():
                continue
        capsys.readouterr()
        status = main([str(a) for a in argv])
        assert_one_line_error(status, capsys.readouterr().err, words)


def test_scan_verify_adds_the_verdicts_to_the_json_the_mask_and_the_report(lm, tmp_path):
    from safetensors.numpy import load_file

    js, mask, report = tmp_path / "scan.json", tmp_path / "mask.safetensors", tmp_path / "report"
    p = run_blackholes("scan", lm["folder"], "--verify", "--device", "cpu", "--json", js, "--mask", mask,
                       "--report", report)
    assert p.returncode == 0, p.stderr
    doc = json.loads(js.read_text())
    v = doc["verification"]
    assert sorted(t["id"] for t in v["tokens"]) == sorted(lm["dead"])  # the hole members
    assert v["counts"]["verified"] == len(lm["dead"])
    tensors = load_file(mask)
    assert sorted(map(int, tensors["verified"].nonzero()[0])) == sorted(lm["dead"])
    assert int(tensors["mask"].sum()) == len(lm["dead"])
    page = (report / "report.md").read_text()
    answer = page.split("## Answer", 1)[1].split("\n## ", 1)[0]
    assert f"**{len(lm['dead'])} of " in answer and "tokens are dead" in answer
    assert "more token" in answer and "verified as under-trained" in answer
    assert "## Verified by the model" in page and "Where verification and the indicator disagree" in page
    assert "Verified (magikarp" in p.stdout


def test_scan_verify_refuses_before_scanning(lm):
    p = run_blackholes("scan", lm["folder"] / "model.safetensors", "--verify")
    assert_one_line_error(p.returncode, p.stderr, "whole model")


def test_without_the_verify_extra_one_line(lm, tmp_path):
    """transformers missing (hidden from this process): a line naming the extra, not an ImportError."""
    hide = tmp_path / "hide"
    hide.mkdir()
    (hide / "sitecustomize.py").write_text(
        "import sys\nclass _Hide:\n    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('transformers', 'accelerate'):\n"
        "            raise ModuleNotFoundError(name)\n        return None\nsys.meta_path.insert(0, _Hide())\n")
    import os

    env = {"PYTHONPATH": os.pathsep.join([str(hide), os.environ.get("PYTHONPATH", "")])}
    p = run_blackholes("verify", lm["folder"], "--tokens", "5", env=env)
    assert_one_line_error(p.returncode, p.stderr, "blackholes[verify]")


def test_prompts_longer_than_the_context_are_one_line(lm, tmp_path):
    short = tmp_path / "short"
    shutil.copytree(lm["folder"], short)
    config = json.loads((short / "config.json").read_text())
    config["max_position_embeddings"] = 256
    (short / "config.json").write_text(json.dumps(config))
    p = run_blackholes("verify", short, "--tokens", "5")
    assert_one_line_error(p.returncode, p.stderr, "more than the model's context of 256")
