"""Results left at the end of a Jupyter cell render as a readable Markdown summary (``_repr_markdown_``)."""

from __future__ import annotations

import json

import numpy as np
from safetensors.numpy import save_file

from blackholes.analysis.dynamics import analyze
from blackholes.analysis.groups import ModelScan, scan


def test_a_scan_shows_its_counts_and_its_largest_holes_as_a_table():
    x = np.arange(40, dtype=np.float32).reshape(10, 4)
    x[[2, 5, 7]] = x[2]
    x[[8, 9]] = 0.5
    md = scan(x)._repr_markdown_()
    assert "10 × 4 F32" in md and "unique vectors: 7" in md and "black holes: 2, holding 5 tokens" in md
    table = [line for line in md.splitlines() if line.startswith("|")]
    assert table[:2] == ["| hole | tokens | ids | e.g. |", "|---:|---:|---|---|"]
    assert table[2].startswith("| 1 | 3 | 2, 5, 7 |") and table[3].startswith("| 2 | 2 | 8–9 |")


def test_a_scan_without_holes_has_no_table_and_a_model_scan_shows_each_matrix():
    r = scan(np.eye(4, dtype=np.float32))
    md = r._repr_markdown_()
    assert "black holes: 0, holding 0 tokens" in md and "| hole |" not in md
    both = ModelScan(input=r, output=r, tied=False)._repr_markdown_()
    assert both.count("**Scan of") == 2 and "\n---\n" in both


def test_many_holes_are_cut_to_the_top_ten_and_token_text_cannot_break_the_table():
    x = np.repeat(np.arange(12, dtype=np.float32)[:, None], 2, axis=0).reshape(24, 1)
    r = scan(x)
    r.groups[0].tokens = ["a|b", "`x`"]
    md = r._repr_markdown_()
    assert sum(line.startswith("| ") and "|---" not in line for line in md.splitlines()) == 11  # header + 10
    assert "2 more holes" in md
    row = next(line for line in md.splitlines() if line.startswith("| 1 |"))
    assert row.count("|") == 5  # the pipe inside the token is escaped, not a new cell


def test_a_dynamics_result_shows_the_verdict_and_each_quantity(tmp_path):
    steps, vocab, dim, rng = 4, 8, 4, np.random.default_rng(0)
    E = rng.standard_normal((steps, vocab, dim)).astype(np.float32)
    E[:, [1, 2]] = E[:, [1]]  # two untrained tokens move as one body
    G = rng.standard_normal((steps, vocab, dim)).astype(np.float32)
    G[:, [1, 2]] = G[:, [1]]
    G[0] = 0
    L = rng.standard_normal((steps, vocab)).astype(np.float32)
    L[:, [1, 2]] = L[:, [1]]
    path = tmp_path / "rec.safetensors"
    save_file({"embeddings": E, "grads": G, "logits": L}, str(path),
              metadata={"never_seen": json.dumps([1, 2]), "steps": json.dumps(list(range(steps)))})
    r = analyze(path)
    md = r._repr_markdown_()
    assert md.startswith(f"**Dynamics of `{path}`**: 4 recorded steps, 8 × 4 F32")
    assert f"**{r.verdict}**" in md and "untrained tokens (metadata): 2 (1-2)" in md
    for q in ("logits", "grads", "positions"):
        assert f"| {q} | yes | – |" in md


def test_a_census_shows_what_it_did_and_its_deadest_models_first(tmp_path):
    from blackholes.pipelines.census import CensusResult

    rows = [{"source": "org/a", "matrix": "output", "holes": 1, "black_hole_tokens": 3, "error": None},
            {"source": "org/b", "matrix": "input", "holes": 2, "black_hole_tokens": 40, "error": None},
            {"source": "org/c", "error": "no such model"}]
    md = CensusResult(rows=rows, out=tmp_path, scanned=2, failed=1, interrupted=True,
                      stopped_by="SIGTERM")._repr_markdown_()
    assert md.startswith(f"**Census in `{tmp_path}`**: 3 rows (2 scanned now, 0 already there, 1 failed")
    assert "**interrupted** (SIGTERM)" in md
    table = [line for line in md.splitlines() if line.startswith("| `")]
    assert table == ["| `org/b` | input | 2 | 40 |", "| `org/a` | output | 1 | 3 |"]
    assert "*failed:* `org/c`: no such model" in md


def test_a_sweep_shows_its_grid_and_its_summary(tmp_path):
    from blackholes.pipelines.sweep_grid import Grid
    from blackholes.pipelines.sweep_report import SweepResult

    grid = Grid.from_options({"sigma": "0,1e-3", "seed": "0-2", "steps": 10})
    empty = SweepResult(runs=[], steps={}, run_ids=[], step_numbers=[], grid=grid, out=tmp_path)
    assert empty._repr_markdown_() == (f"**Sweep in `{tmp_path}`**: 6 runs over sigma (2), seed (3); 0 finished "
                                       "(0 trained now, 0 already there, 0 failed)")
    row = {"options": {"sigma": 0.0, "seed": 0}, "final": {"never_seen_one_point": True, "tokens_in_holes": 72,
           "holes": 1}, "freeze_step": 1043, "final_loss": 2.5, "error": None}
    r = SweepResult(runs=[row], steps={}, run_ids=[0], step_numbers=[], grid=grid, out=tmp_path, trained=1)
    md = r._repr_markdown_()
    assert "1 finished (1 trained now" in md
    assert md.endswith("```\n" + r.summary() + "\n```") and "sigma=0: 1 run" in md
