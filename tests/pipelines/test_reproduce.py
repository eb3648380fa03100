"""`blackholes reproduce`: every promised file exists, is valid, and agrees with independent analyses."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from blackholes.cli import main
from blackholes.errors import BlackholesError
from blackholes.pipelines.reproduce import FILES, OTHER_RECORDING, reproduce

STEPS = 40
FAST = {"compile": False}  # torch.compile pays for itself only on long runs


def _corpus(path: Path) -> Path:
    """Lowercase prose with ten rare bytes, each once: most are never drawn in 40 short windows."""
    rng = np.random.default_rng(7)
    words = ["the", "hole", "moves", "as", "one", "body", "and", "never", "splits", "apart"]
    text = list(" ".join(rng.choice(words, size=9000)))
    for i, ch in enumerate("QXZ0123456"):
        text[1000 + 3500 * i] = ch
    path.write_text("".join(text), encoding="ascii")
    return path


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    base = tmp_path_factory.mktemp("reproduce")
    corpus = _corpus(base / "corpus.txt")
    out = base / "demo"
    result = reproduce(out, corpus=corpus, steps=STEPS, progress=False, log=None, recipe=FAST)
    return result, out, corpus


def test_every_promised_file_exists(run):
    result, out, _ = run
    for key, name in FILES.items():
        assert (out / name).is_file(), name
    for name in ("dynamics_spread", "dynamics_speed", "dynamics_logits", "map"):
        assert result.files[name].is_file()
    assert result.report_html == out / "report.html"


def test_pngs_decode(run):
    from matplotlib.image import imread

    pngs = sorted((run[1] / "plots").glob("*.png"))
    assert len(pngs) == 6  # dynamics x3, census x2, map
    for png in pngs:
        image = imread(png)
        assert image.ndim == 3 and min(image.shape[:2]) > 200, png


def test_html_is_self_contained_and_references_only_existing_files(run):
    result, out, _ = run
    page = (out / "report.html").read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    refs = re.findall(r'(?:src|href)="([^"]+)"', page)
    embedded = [r for r in refs if r.startswith("data:image/png;base64,")]
    assert len(embedded) == 6  # dynamics x3, census x2, map
    for ref in refs:
        if not ref.startswith("data:"):
            assert (out / ref).is_file(), ref
    # file names mentioned in the page exist too
    for name in re.findall(r"<code>([\w/.-]+\.(?:safetensors|json|png|md))</code>", page):
        assert (out / name).is_file(), name
    # the page opens with the answer, then the evidence, then the command and versions
    answer, evidence, how = page.index(">Answer<"), page.index(">Evidence<"), page.index(">How this was made<")
    assert answer < evidence < how
    assert f"--steps {STEPS}" in page and "numpy" in page and "torch" in page and "blackholes" in page


def test_markdown_matches_html(run):
    result, out, _ = run
    md = (out / "report.md").read_text(encoding="utf-8")
    for line in result.answer:
        assert line in md
    for ref in re.findall(r"\]\(([^)]+)\)", md):
        assert (out / ref).is_file(), ref
    assert result.command in md
    assert f"A {result.config['layers']}-layer byte-level GPT (width {result.config['width']})" in md


def test_scan_json_agrees_with_an_independent_scan(run):
    """The scan JSONs against a brute-force grouping of the recorded matrices' rows by their bytes."""
    result, out, _ = run
    raw = (out / "recording.safetensors").read_bytes()  # read by hand: no blackholes reader involved
    n = int.from_bytes(raw[:8], "little")
    info = json.loads(raw[8:8 + n])["embeddings"]
    begin, end = info["data_offsets"]
    steps, vocab, _ = info["shape"]
    emb = np.frombuffer(raw[8 + n + begin:8 + n + end], np.uint8).reshape(steps, vocab, -1)  # each row's bytes
    assert steps == STEPS + 1
    for which, index in (("initial", 0), ("final", -1)):
        by_bytes: dict[bytes, list[int]] = {}
        for row, vector in enumerate(emb[index]):
            by_bytes.setdefault(vector.tobytes(), []).append(row)
        groups = sorted((g for g in by_bytes.values() if len(g) >= 2), key=lambda g: (-len(g), g[0]))
        doc = json.loads((out / f"scan_{which}.json").read_text())
        assert doc["unique_vectors"] == len(by_bytes)
        assert doc["black_hole_tokens"] == sum(len(g) for g in groups)
        assert [g["token_ids"] for g in doc["groups"]] == groups


def test_masks_are_readable_as_the_notebooks_read_them(run):
    import torch
    from safetensors.torch import load_file

    result, out, _ = run
    final = load_file(out / "mask_final.safetensors")
    assert final["mask"].dtype == torch.bool and tuple(final["mask"].shape) == (128,)
    assert sorted(torch.nonzero(final["mask"]).flatten().tolist()) == sorted(
        t for g in result.final_scan.groups for t in g.token_ids
    )
    assert bool(load_file(out / "mask_initial.safetensors")["mask"].all())  # sigma = 0: one point


def test_sigma_zero_hole_is_never_seen_plus_never_drawn(run):
    """Check the report's hole against the corpus and the recording's draw counts, computed here."""
    from blackholes.io.safetensors import read_header

    result, out, corpus = run
    present = set(corpus.read_bytes())
    never_seen = [b for b in range(128) if b not in present]
    meta = read_header(out / "recording.safetensors").metadata
    inputs, targets = json.loads(meta["input_counts"]), json.loads(meta["target_counts"])
    never_drawn = [b for b in range(128) if b in present and inputs[b] == 0 and targets[b] == 0]
    assert never_drawn, "the fixture should leave some rare byte undrawn"
    summary = json.loads((out / "reproduce.json").read_text())
    assert summary["never_seen"] == never_seen
    assert summary["never_drawn"] == never_drawn
    assert summary["hole_tokens"] == sorted(never_seen + never_drawn)
    assert summary["dead_tokens"] == len(never_seen) + len(never_drawn)
    assert all(c["passed"] for c in summary["checks"]), summary["checks"]
    # the hole is one group of the final scan
    groups = json.loads((out / "scan_final.json").read_text())["groups"]
    assert sorted(never_seen + never_drawn) in [g["token_ids"] for g in groups]
    assert result.answer[0].startswith(f"**{len(never_seen) + len(never_drawn)} of 128 tokens are dead**")


def test_dynamics_json_agrees_with_analyze(run):
    from blackholes.analysis.dynamics import analyze

    result, out, _ = run
    doc = json.loads((out / "dynamics.json").read_text())
    fresh = analyze(out / "recording.safetensors", tokens=result.never_seen)
    assert doc["untrained_tokens"] == fresh.untrained_tokens == result.never_seen
    assert doc["identical_all_steps"] == fresh.identical_all_steps == {"logits": True, "grads": True, "positions": True}
    assert doc["first_divergence"] == fresh.first_divergence
    assert doc["rigid_body"] is True
    summary = json.loads((out / "reproduce.json").read_text())
    assert summary["rigid_body"] is True
    # the frozen-from step is read off the per-step series: frozen at every step from it on
    frac = np.array([np.nan if v is None else v for v in doc["series"]["frozen_fraction"]])
    steps = np.array(doc["series"]["step"])
    if summary["frozen_from"] is not None:
        assert (frac[steps >= summary["frozen_from"]] == 1.0).all()
        assert frac[steps == summary["frozen_from"] - 1][0] != 1.0 or summary["frozen_from"] == 1
    else:
        assert frac[-1] != 1.0


def test_map_json_agrees_with_final_scan(run):
    result, out, _ = run
    summary = json.loads((out / "reproduce.json").read_text())
    assert summary["map"]["black_hole_tokens"] == result.final_scan.black_hole_tokens
    assert summary["map"]["without_mask"]["peak_bin_count"] >= len(result.hole_tokens)
    assert summary["map"]["with_mask"]["peak_bin_count"] < len(result.hole_tokens)


def test_existing_folder_needs_force(run, capsys):
    result, out, corpus = run
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    rc = main(["reproduce", "--corpus", str(corpus), "--steps", "3", "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("blackholes: error: ") and "--force" in err and err.count("\n") == 1
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before  # nothing touched


def test_force_overwrites_and_sigma_keeps_rows_apart(tmp_path, capsys):
    corpus = _corpus(tmp_path / "corpus.txt")
    out = tmp_path / "run"
    out.mkdir()
    (out / "old.txt").write_text("left from before")
    (out / "report.html").write_text("a stale report")
    with pytest.raises(BlackholesError, match="pass --force"):
        reproduce(out, corpus=corpus, steps=3, progress=False, log=None, recipe=FAST)
    r = reproduce(out, corpus=corpus, steps=3, sigma=0.01, force=True, progress=False, log=None, recipe=FAST)
    assert r.initial_scan.black_hole_tokens == 0
    assert r.hole_tokens == []
    assert r.answer[0].startswith("**No black hole**")
    assert all(c.passed for c in r.checks)
    assert r.dynamics is not None and r.dynamics.identical_all_steps["positions"] is False
    md = (out / "report.md").read_text()
    assert "--sigma 0.01" in md
    assert "one shared point" not in md and "starting at its own point" in md  # worded from sigma
    assert r.density.masked is None  # nothing to mask: one density panel
    assert (out / "old.txt").read_text() == "left from before"  # not ours: left alone
    assert "stale" not in (out / "report.html").read_text()
    assert "with_mask" not in json.loads((out / "reproduce.json").read_text())["map"]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--steps", "0"], "--steps must be at least 1"),
        (["--sigma", "-1"], "--sigma must be a finite number >= 0"),
        (["--corpus", "/nonexistent/corpus.txt"], "no such corpus file"),
    ],
)
def test_cli_bad_arguments(tmp_path, capsys, argv, message):
    rc = main(["reproduce", *argv, "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 2 and message in err and err.count("\n") == 1


def test_cli_out_is_a_file(tmp_path, capsys):
    (tmp_path / "f").write_text("x")
    assert main(["reproduce", "--out", str(tmp_path / "f")]) == 2
    assert "is a file" in capsys.readouterr().err


def test_every_byte_drawn_means_no_hole_and_no_dynamics(tmp_path):
    """A corpus cycling through all 128 bytes: every window draws every byte, so nothing stays behind."""
    corpus = tmp_path / "all.txt"
    corpus.write_bytes(bytes(range(128)) * 20)
    out = tmp_path / "run"
    r = reproduce(out, corpus=corpus, steps=2, progress=False, log=None, recipe=FAST)
    assert r.never_seen == [] and r.never_drawn == [] and r.hole_tokens == []
    assert r.dynamics is None and not (out / "dynamics.json").exists()
    assert r.answer[0].startswith("**No black hole** after 2 steps")
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 1  # the map only
    for ref in re.findall(r'href="([^"]+)"', page):
        assert (out / ref).is_file()
    summary = json.loads((out / "reproduce.json").read_text())
    assert summary["rigid_body"] is None and "dynamics" not in summary["files"]


def test_followed_bytes_named_as_never_seen_and_never_drawn(tmp_path):
    """One never-seen byte is too few to follow alone, so dynamics follows it with the never-drawn ones:
    the answer must not call them all never-seen."""
    rng = np.random.default_rng(3)
    words = ["the", "hole", "moves", "as", "one", "body"]
    text = " ".join(rng.choice(words, size=6000)).encode("ascii")
    corpus = tmp_path / "c.txt"
    corpus.write_bytes(text[:3000] + bytes(range(1, 128)) + text[3000:])  # only byte 0 never occurs
    r = reproduce(tmp_path / "run", corpus=corpus, steps=3, progress=False, log=None, recipe=FAST)
    assert r.never_seen == [0] and len(r.never_drawn) >= 2 and r.dynamics is not None
    followed = r.dynamics.untrained_tokens
    assert followed == sorted([0] + r.never_drawn)
    line = next(a for a in r.answer if "move as one body" in a)
    assert "never-seen bytes" not in line
    assert f"the {len(followed)} untouched bytes (1 never seen, {len(followed) - 1} never drawn)" in line


def test_census_and_precision_in_the_report(tmp_path):
    """bf16-mixed: the census paragraph says how many holes exist and whether the hole still freezes."""
    corpus = _corpus(tmp_path / "c.txt")
    r = reproduce(tmp_path / "mixed", corpus=corpus, steps=40, precision="bf16-mixed", progress=False, log=None,
                  recipe=FAST)
    assert r.config["precision"] == "bf16-mixed" and "--precision bf16-mixed" in r.command
    assert r.census is not None and len(r.census.steps) == 41
    census_line = next(line for line in r.answer if line.startswith("**Every group, every step**"))
    assert f"{int(r.census.holes[-1]):,} ({int(r.census.tokens_in_holes[-1]):,} tokens) at step 40" in census_line
    assert "In bf16-mixed the hole" in census_line
    doc = json.loads((tmp_path / "mixed" / "dynamics.json").read_text())
    assert doc["census"]["series"]["holes"] == [int(h) for h in r.census.holes]
    page = (tmp_path / "mixed" / "report.md").read_text()
    assert "Every group at every step (census)" in page and "plots/census.png" in page


def test_sigterm_mid_training_exits_143_and_keeps_the_recording(tmp_path):
    """reproduce stopped by SIGTERM: 128 + 15, the partial recording kept, no report, no empty plots/."""
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "run"
    p = subprocess.Popen([sys.executable, "-m", "blackholes", "reproduce", "--out", str(out), "--steps", "100000",
                          "--quiet"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not list(out.glob(".recording.safetensors.*.tmp")) and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(1.0)
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 128 + signal.SIGTERM, err
    last = err.strip().splitlines()[-1]  # the one stop line of every command: what stopped it, then what was kept
    assert last.startswith("blackholes: terminated (SIGTERM): interrupted after ") and "Traceback" not in err
    assert (out / "recording.safetensors").is_file() and not (out / "plots").exists()
    assert not (out / "report.html").exists()


def test_numerics_in_the_json_the_command_and_the_page(run):
    result, out, _ = run
    doc = json.loads((out / "reproduce.json").read_text())
    assert doc["numerics"] == doc["config"]["numerics"] == result.numerics == "eager"
    assert doc["numerics_comparison"] is None and "--numerics eager" in result.command
    assert "recording_other" not in doc["files"] and not (out / OTHER_RECORDING).exists()
    assert "eager numerics" in (out / "report.md").read_text()


def test_compare_numerics_says_whether_the_freeze_is_the_recipes_or_its_roundings(tmp_path):
    from blackholes.io.recording import Recording

    corpus = _corpus(tmp_path / "c.txt")
    r = reproduce(tmp_path / "both", corpus=corpus, steps=STEPS, progress=False, log=None, compare_numerics=True)
    c = r.numerics_comparison
    assert r.numerics == "eager" and "--numerics eager --compare-numerics" in r.command
    assert c["eager"]["holes"] == len(r.final_scan.groups) and c["eager"]["frozen_from"] == r.frozen_from
    same = c["eager"]["frozen_from"] == c["compiled"]["frozen_from"] and c["eager"]["holes"] == c["compiled"]["holes"]
    holes = c["eager"]["holes"] == c["compiled"]["holes"] and c["eager"]["hole_tokens"] == c["compiled"]["hole_tokens"]
    assert c["holes"] == ("recipe" if holes else "rounding")
    assert c["freeze"] == ("recipe" if same and holes else "rounding")
    mine, other = Recording(r.recording), Recording(r.files["recording_other"])
    assert (mine.numerics, other.numerics) == ("eager", "compiled")
    a, b = mine.tensor("embeddings"), other.tensor("embeddings")
    differ = [int(mine.steps[i]) for i in range(len(mine)) if not np.array_equal(a[i], b[i])]
    assert c["first_difference_step"] == (differ[0] if differ else None)
    assert json.loads((tmp_path / "both" / "reproduce.json").read_text())["numerics_comparison"] == c
    page = (tmp_path / "both" / "report.md").read_text()
    assert "compiled numerics" in page and ("property of the recipe" in page or "depends on the rounding" in page)


def test_the_recording_is_the_train_run_with_the_same_options(run, tmp_path):
    """reproduce, train and sweep share one recipe, numerics included: the same options give the same run."""
    import dataclasses

    from blackholes.training.config import TrainConfig
    from blackholes.training.loop import train

    result, out, _ = run
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    config = TrainConfig(**{k: v for k, v in result.config.items() if k in names})
    mine = train(config, tmp_path / "train.safetensors", progress=False)
    assert mine.numerics == result.numerics == "eager"
    assert mine.path.read_bytes() == result.recording.read_bytes()
