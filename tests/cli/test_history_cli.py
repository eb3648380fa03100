"""``blackholes history`` through the real CLI: a folder of checkpoints, and bad input in one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from blackholes.io.safetensors import save_safetensors

EMB = "model.embed_tokens.weight"


def checkpoint(folder: Path, array: np.ndarray) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    save_safetensors(folder / "model.safetensors", {EMB: array})
    (folder / "config.json").write_text(json.dumps({"tie_word_embeddings": True}))


def series(root: Path, n: int = 3, V: int = 32, D: int = 4) -> Path:
    m = np.random.default_rng(0).standard_normal((V, D)).astype(np.float32)
    m[:6] = 0
    for i in range(n):
        if i == 1:
            m[3:6] = 1  # the hole of six splits in two
        checkpoint(root / f"checkpoint-{i * 50}", m)
    return root


def test_a_folder_of_checkpoints_gives_the_page_and_resumes(tmp_path):
    run = series(tmp_path / "run")
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, "-m", "blackholes", "history", str(run), "--out", str(tmp_path / "h"),
           "--json", str(tmp_path / "h.json"), "--workers", "1"]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "Holes are already there at the first checkpoint (step 0)" in done.stdout
    assert "split 1 time(s) and merged 0 time(s), at step(s) 50" in done.stdout
    doc = json.loads((tmp_path / "h.json").read_text())
    assert [c["hole_sizes"] for c in doc["checkpoints"]] == [[6], [3, 3], [3, 3]]
    assert [(e["kind"], e["step"]) for e in doc["events"]] == [("fission", 50)]
    assert doc == json.loads((tmp_path / "h" / "history.json").read_text())
    page = (tmp_path / "h" / "history.md").read_text()
    assert page.splitlines()[2].startswith("- Holes are already there") and "frozen" in page
    again = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert again.returncode == 0 and "(0 read now, 0 bytes)" in again.stdout, again.stdout + again.stderr


def test_a_series_of_one_checkpoint(tmp_path, cli_error):
    run = series(tmp_path / "run", n=1)
    cli_error(["history", run, "--out", tmp_path / "h"], "at least 2 checkpoints")
    cli_error(["history", run / "checkpoint-0", "--out", tmp_path / "h"], "at least 2 checkpoints")


def test_mixed_matrix_widths(tmp_path, cli_error):
    checkpoint(tmp_path / "run" / "step1", np.zeros((16, 4), np.float32))
    checkpoint(tmp_path / "run" / "step2", np.zeros((16, 8), np.float32))
    cli_error(["history", tmp_path / "run", "--out", tmp_path / "h", "--workers", "1"], "mixed matrix widths")


def test_a_glob_that_matches_nothing(tmp_path, monkeypatch, cli_error):
    repo = tmp_path / "hub" / "models--org--tiny"
    (repo / "refs").mkdir(parents=True)
    for i in range(2):
        checkpoint(repo / "snapshots" / f"{i:040x}", np.zeros((8, 4), np.float32))
        (repo / "refs" / f"step{i}").write_text(f"{i:040x}")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    cli_error(["history", "org/tiny", "--revisions", "ckpt*", "--out", tmp_path / "h"], "matches none")
    cli_error(["history", "org/tiny", "--revisions", "step9-step1:1", "--out", tmp_path / "h"], "a range goes up")
    cli_error(["history", "a", "b", "--revisions", "main", "--out", tmp_path / "h"], "one model")


def test_every_checkpoint_unreadable(tmp_path, cli_error, capsys):
    from blackholes.cli import main

    status = main(["history", str(tmp_path / "x"), str(tmp_path / "y"), "--out", str(tmp_path / "h"),
                   "--workers", "1"])
    err = capsys.readouterr().err
    assert status == 2 and err.count("\n") == 3 and "Traceback" not in err
    assert err.splitlines()[-1].startswith("blackholes: error: a history needs at least 2 readable checkpoints")


def test_no_output_replaces_an_input(tmp_path, cli_error):
    run = series(tmp_path / "run")
    model = run / "checkpoint-0" / "model.safetensors"
    before = model.read_bytes()
    cli_error(["history", run, "--out", tmp_path / "h", "--json", model], "model.safetensors")
    cli_error(["history", run, "--out", tmp_path / "h", "--json", run / "checkpoint-50" / "config.json"], "config.json")
    assert model.read_bytes() == before
