"""The sweep's pages, from fake-but-realistic sweep folders (runs.jsonl + steps.safetensors, as the
training sweep writes them; coarsening.json, as ``sweep --no-train`` writes it)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from blackholes.errors import BlackholesError
from blackholes.io.safetensors import save_safetensors
from blackholes.render import coarsening as coarsening_report
from blackholes.render import sweep as report

SIGMAS = [0.0, 1e-4, 1e-3, 1e-2, 0.1]
PRECISIONS = ["bf16", "fp32"]


def _run(run_id: int, sigma: float, seed: int, precision: str, steps: int, rng) -> tuple[dict, dict]:
    """One finished run's row and its per-step counts: holes shrink as σ grows, fp32 keeps fewer."""
    alive = 49 if sigma == 0 else int(49 * max(0.0, 1 - 250 * sigma) * (0.7 if precision == "fp32" else 1))
    alive = max(0, alive - int(rng.integers(0, 3))) if sigma else alive
    holes = 0 if alive < 2 else (1 if sigma == 0 else 1 + int(rng.integers(0, 3)))
    t = np.arange(steps + 1)
    start = 128 if sigma == 0 else max(alive, int(128 * np.exp(-sigma * 4000)))
    decay = (start * np.exp(-t / (40 if holes else 20))).astype(int)
    tokens = np.maximum(alive, decay) if holes else decay
    tokens[tokens < 2] = 0
    hole_curve = np.where(tokens > 0, np.maximum(holes, 1), 0)
    freeze = int(120 + 400 * sigma + rng.integers(0, 30)) if holes and sigma < 0.01 else None
    row = {
        "run": run_id,
        "options": {"sigma": sigma, "seed": seed, "precision": precision, "init": "centre", "steps": steps,
                    "lr": 1e-3, "corpus": "default_corpus.txt"},
        "final": {"distinct": 128 - max(0, alive - holes), "holes": holes, "tokens_in_holes": alive if holes else 0,
                  "largest": alive if holes else 0, "never_seen_one_point": sigma == 0},
        "hole_sizes": [alive] if holes else [],
        "freeze_step": freeze, "first_fission": None if sigma == 0 else 3,
        "final_loss": float(2.1 + sigma + rng.random() * 0.05), "seconds": float(4 + rng.random()),
        "batched": True, "error": None,
    }
    series = {"holes": hole_curve, "tokens_in_holes": tokens, "largest": tokens,
              "loss": (5 * np.exp(-t / 60) + 2.1).astype(np.float32)}
    return row, series


def fake_sweep(folder: Path, *, steps: int = 200, failed: bool = True, seeds=(0, 1, 2)) -> list[dict]:
    """A sweep folder: every (precision, σ, seed) run in runs.jsonl and steps.safetensors, one failed run."""
    rng = np.random.default_rng(0)
    rows, series = [], []
    for precision in PRECISIONS:
        for sigma in SIGMAS:
            for seed in seeds:
                row, s = _run(len(rows), sigma, seed, precision, steps, rng)
                rows.append(row)
                series.append(s)
    if failed:
        bad = dict(rows[-1], run=len(rows), error="out of memory: 4.2 GB needed, 2.0 GB free", final=None,
                   hole_sizes=None, freeze_step=None)
        bad["options"] = dict(rows[-1]["options"], seed=99)
        rows.append(bad)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "runs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    done = [r["run"] for r in rows if r["error"] is None]
    tensors = {name: np.stack([s[name] for s in series]).astype(np.int32)
               for name in ("holes", "tokens_in_holes", "largest")}
    tensors["loss"] = np.stack([s["loss"] for s in series]).astype(np.float32)
    tensors["distinct"] = 128 - tensors["tokens_in_holes"] + tensors["holes"]
    tensors["never_seen_one_point"] = np.zeros_like(tensors["holes"], dtype=bool)
    tensors["hole_logit"] = np.zeros_like(tensors["loss"])
    tensors["hole_speed"] = np.zeros_like(tensors["loss"])
    save_safetensors(folder / "steps.safetensors", tensors,
                     metadata={"runs": json.dumps(done), "steps": json.dumps(list(range(steps + 1)))})
    return rows


def test_the_sweep_page_says_what_the_runs_found(tmp_path):
    rows = fake_sweep(tmp_path)
    paths = report.write_sweep_report(tmp_path)
    names = sorted(p.name for p in paths)
    assert names == ["sweep.html", "sweep.md", "sweep_final.png", "sweep_freeze.png", "sweep_steps.png"]
    for p in paths:
        assert p.is_file() and p.stat().st_size > 0
    md = (tmp_path / "sweep.md").read_text()
    # one section per precision, one table row per σ
    assert "## bf16" in md and "## fp32" in md
    bf16 = md.split("## bf16")[1].split("##")[0]
    assert bf16.count("\n| ") == len(SIGMAS) + 2  # header, rule, one row per σ
    zero = [r for r in rows if r["options"]["sigma"] == 0 and r["options"]["precision"] == "bf16"]
    assert "at σ = 0 the runs end with 49 tokens in 1 hole;" in md
    assert len(zero) == 3
    # the failed run is listed with its one-line reason, and excluded from the curves
    assert "out of memory: 4.2 GB needed" in md and "Failed runs" in md
    assert "30** runs finished (1 failed)" in md
    html = (tmp_path / "sweep.html").read_text()
    assert html.count("data:image/png;base64,") == 3


def test_summary_is_mean_min_max_over_seeds():
    runs = [{"options": {"sigma": 0.1, "seed": s, "precision": "bf16"}, "final": {"holes": h, "tokens_in_holes": 2 * h,
             "largest": h}, "freeze_step": f, "error": None} for s, h, f in ((0, 1, 10), (1, 3, None), (2, 5, 30))]
    runs.append({"options": {"sigma": 0.1, "seed": 3, "precision": "bf16"}, "error": "boom"})
    (row,) = report.summarise(runs)["bf16, eager numerics"]
    assert row["seeds"] == 3
    assert row["holes"] == {"mean": 3.0, "min": 1, "max": 5, "n": 3}
    assert row["freeze"] == {"mean": 20.0, "min": 10, "max": 30, "n": 2} and row["never_froze"] == 1
    assert report._freeze_cell(row) == "20 [10–30] (1 never)"


def test_an_option_that_varies_makes_its_own_curve():
    runs = [{"options": {"sigma": 0, "seed": 0, "precision": "bf16", "init": i, "steps": 10}, "final": {"holes": 1},
             "error": None} for i in ("centre", "unit")]
    assert sorted(report.summarise(runs)) == ["bf16, eager numerics, init=centre", "bf16, eager numerics, init=unit"]


def test_numerics_make_curves_and_the_page_says_whether_the_rounding_moves_the_freeze(tmp_path):
    """Rows written before numerics existed read as their ``compiled`` field says."""
    base = {"sigma": 0, "seed": 0, "precision": "bf16", "steps": 10}
    runs = [{"options": {**base, "numerics": "eager"}, "final": {"holes": 11}, "freeze_step": 25, "error": None},
            {"options": {**base, "numerics": "compiled"}, "final": {"holes": 4}, "freeze_step": 25, "error": None},
            {"options": {**base, "seed": 1}, "compiled": False, "final": {"holes": 2}, "freeze_step": 7, "error": None}]
    assert sorted(report.summarise(runs)) == ["bf16, compiled numerics", "bf16, eager numerics"]
    assert report.summarise(runs)["bf16, eager numerics"][0]["seeds"] == 2
    words = report.numerics_words(runs)
    assert words.startswith("1 run(s) trained with both numerics: 1 freeze at the same step and 0 end with the same")
    assert "the rounding path moves them" in words
    assert report.numerics_words(runs[:1]) is None


def test_partial_last_line_and_missing_steps_file(tmp_path):
    fake_sweep(tmp_path, failed=False, seeds=(0,))
    (tmp_path / "steps.safetensors").unlink()
    with open(tmp_path / "runs.jsonl", "a") as f:
        f.write('{"run": 99, "options": {"sig')  # a run killed while writing its line
    paths = report.write_sweep_report(tmp_path)
    assert "sweep_steps.png" not in {p.name for p in paths}
    assert "1 unreadable line(s)" in (tmp_path / "sweep.md").read_text()


def test_refusals(tmp_path):
    with pytest.raises(BlackholesError, match="holds no sweep"):
        report.write_sweep_report(tmp_path)
    fake_sweep(tmp_path, failed=False, seeds=(0,))
    save_safetensors(tmp_path / "steps.safetensors", {"holes": np.zeros((2, 3), np.int32)},
                     metadata={"runs": "[0, 1]", "steps": "[0, 1]"})
    with pytest.raises(BlackholesError, match=r"expected \[2, 2\]"):
        report.write_sweep_report(tmp_path)
    (tmp_path / "coarsening.json").write_text('{"format": "something else"}')
    with pytest.raises(BlackholesError, match="not a coarsening sweep"):
        report.read_coarsening(tmp_path / "coarsening.json")


def test_sigma_axis_puts_zero_one_decade_left():
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    x = report.sigma_axis(ax, [0.0, 1e-4, 1e-2])
    assert list(x([0.0, 1e-4, 1e-2])) == [1e-5, 1e-4, 1e-2]
    assert ax.get_xscale() == "log" and ax.get_xticklabels()[0].get_text() == "0"
    plt.close(fig)


def test_coarsening_page(tmp_path):
    from blackholes.pipelines.coarsening import coarsening_sweep

    result = coarsening_sweep("0,1e-7:1e-4:7:log", seeds=[0, 1], tokens=48, dim=12, target=[30, 6, 2])
    data = json.loads(json.dumps(result.to_json()))  # as read back from coarsening.json
    paths = report.write_coarsening_report(tmp_path, data)
    assert sorted(p.name for p in paths) == ["coarsening.html", "coarsening.md", "coarsening_fit.png",
                                             "coarsening_holes.png", "coarsening_spread.png"]
    md = (tmp_path / "coarsening.md").read_text()
    best = result.best()
    assert f"σ = **{report.fmt_sigma(best['sigma'])}**" in md
    assert md.count("\n| ") == len(result.sigmas) + 2
    assert "Closest to the target (3 holes, 38 tokens: 30, 6, 2)" in md  # a list of sizes has no name
    text = coarsening_report.coarsening_summary(data)
    assert "**" not in text and "Holes form up to σ" in text
