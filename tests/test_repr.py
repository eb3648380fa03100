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
