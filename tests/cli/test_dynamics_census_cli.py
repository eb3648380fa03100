"""`blackholes dynamics --census`: the census section, its plots and summary, through the real CLI."""

import json

import numpy as np

from blackholes.analysis.dynamics import DEFAULT_STEPS
from blackholes.analysis.lifecycle import census_of_recording
from blackholes.cli import main
from blackholes.cli.main import build_parser
from blackholes.io.safetensors import save_safetensors


def _recording(path):
    """6 records of 12 tokens: tokens 8-11 one point (never seen); tokens 2 and 3 merge at step 30."""
    rng = np.random.default_rng(3)
    emb = rng.standard_normal((6, 12, 4)).astype(np.float32)
    emb[:, 8:] = emb[:, 8:9]
    emb[3:, 3] = emb[3:, 2]
    grads = np.zeros_like(emb)
    grads[1:] = 0.5
    logits = rng.standard_normal((6, 12)).astype(np.float32)
    logits[:, 8:] = logits[:, 8:9]
    meta = {"steps": json.dumps([0, 10, 20, 30, 40, 50]), "never_seen": json.dumps([8, 9, 10, 11])}
    save_safetensors(path, {"embeddings": emb, "grads": grads, "logits": logits}, metadata=meta)
    return path


def test_census_section_plots_and_summary(tmp_path, capsys):
    rec = _recording(tmp_path / "run.safetensors")
    out, plots = tmp_path / "d.json", tmp_path / "plots"
    plots.mkdir()
    assert main(["dynamics", str(rec), "--census", "--json", str(out), "--plots", str(plots)]) == 0
    printed = capsys.readouterr().out
    assert "Census of 6 recorded steps" in printed and "1 merger(s)" in printed
    doc = json.loads(out.read_text())
    again = json.loads(json.dumps(census_of_recording(rec, never_seen=[8, 9, 10, 11]).to_json()))
    assert {**doc["census"], "seconds": 0} == {**again, "seconds": 0}
    assert doc["census"]["series"]["holes"] == [1, 1, 1, 2, 2, 2]
    assert sorted(p.name for p in plots.iterdir()) == [
        "census.png", "census_last_motion.png", "dynamics_logits.png", "dynamics_speed.png", "dynamics_spread.png"]


def test_census_plots_never_overwrite_an_input(tmp_path, cli_error):
    plots = tmp_path / "plots"
    plots.mkdir()
    rec = _recording(plots / "census.png")  # the recording sits where a census plot would go
    before = rec.read_bytes()
    cli_error(["dynamics", rec, "--census", "--plots", plots], words="is an input of this command")
    assert rec.read_bytes() == before and sorted(p.name for p in plots.iterdir()) == ["census.png"]


def test_dynamics_default_steps_come_from_the_analysis():
    args = build_parser().parse_args(["dynamics", "r.safetensors"])
    assert args.steps == ",".join(map(str, DEFAULT_STEPS))
