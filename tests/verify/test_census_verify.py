"""``census --verify``: one verification task per model through the runner; its counts join the model's row."""

from __future__ import annotations

import json

from support import run_blackholes


def test_census_verify_adds_verified_counts_to_the_rows(lm, tmp_path):
    out = tmp_path / "census"
    p = run_blackholes("census", lm["folder"], "--out", out, "--verify", "--workers", "1", "--matrix", "output")
    assert p.returncode == 0, p.stderr
    rows = [json.loads(line) for line in (out / "census.jsonl").read_text().splitlines()]
    latest = rows[-1]
    assert latest["verified"] == len(lm["dead"])  # the planted hole: every member verified by the model
    assert latest["verification"]["strong_verified"] == len(lm["dead"])
    assert sorted(latest["verification"]["verified_ids"]) == sorted(lm["dead"])
    section = json.loads((out / latest["verification_json"]).read_text())["verification"]
    assert sorted(t["id"] for t in section["tokens"]) == sorted(lm["dead"])
    # The same command again: the model is scanned and verified already, nothing is redone.
    again = run_blackholes("census", lm["folder"], "--out", out, "--verify", "--workers", "1", "--matrix", "output")
    assert again.returncode == 0, again.stderr
    assert len((out / "census.jsonl").read_text().splitlines()) == len(rows)
