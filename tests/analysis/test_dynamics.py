"""Tests for `blackholes dynamics`: small hand-built recordings with known answers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from blackholes.cli import main
from support import SHARED, assert_one_line_error
from blackholes.analysis.dynamics import _pairwise, analyze
from blackholes.analysis.ids import parse_steps, parse_tokens
from blackholes.io.dtypes import key_bits, ulp_key
from blackholes.io.dtypes import ulp_spacing as _ulp
from blackholes.errors import BlackholesError

UNTRAINED = [3, 5, 7, 11]


# ---------------------------------------------------------------------------- helpers


def simulate(steps=12, vocab=16, dim=8, untrained=UNTRAINED, sigma=0.0, seed=0, nudge=None,
             freeze=(), zero_coordinate=False, bf16=False):
    """A toy training run: shared point (+ sigma noise), untrained rows share one gradient.

    nudge=(token, step): that token is pushed off the hole at that step (and stays off).
    freeze: steps at which the hole's update is dropped although its gradient is not zero.
    zero_coordinate: coordinate 0 of the hole is pinned at exactly +0.0.
    Returns float32 arrays embeddings [steps+1, V, D], grads, logits [steps+1, V], losses.
    """
    rng = np.random.default_rng(seed)
    U = list(untrained)
    pos = np.full((vocab, dim), 0.25, np.float32)
    pos += np.float32(sigma) * rng.standard_normal((vocab, dim), dtype=np.float32)
    h = rng.standard_normal(dim).astype(np.float32)
    E, G, L = [], [], []
    for t in range(steps + 1):
        g = np.zeros((vocab, dim), np.float32)
        if t:
            g = rng.standard_normal((vocab, dim), dtype=np.float32) * np.float32(0.1)
            g[U] = g[U[0]]
            step = np.float32(0.05) * g
            if t in freeze:
                step[U] = 0  # e.g. an update below one ulp, rounded away
            pos = pos - step
        if nudge and t == nudge[1]:
            pos[nudge[0]] += np.float32(0.5)
        if zero_coordinate:
            pos[U, 0] = 0.0
        if bf16:
            pos = _round_bf16(pos)
        E.append(pos.copy())
        G.append(g)
        L.append(pos @ h)
    losses = np.full(steps + 1, np.nan, np.float32)
    losses[1:] = np.linspace(4.0, 2.0, steps)
    return np.stack(E), np.stack(G), np.stack(L).astype(np.float32), losses


def _round_bf16(x):
    import torch

    return torch.from_numpy(np.ascontiguousarray(x)).to(torch.bfloat16).float().numpy()


def save(path, E, G, L, losses=None, *, bf16=False, metadata=None, drop=()):
    """Write a recording: F32 with safetensors.numpy, or real BF16 with safetensors.torch."""
    tensors = {"embeddings": E, "grads": G, "logits": L}
    if losses is not None:
        tensors["losses"] = losses
    for key in drop:
        tensors.pop(key)
    meta = None if metadata is None else {k: json.dumps(v) if not isinstance(v, str) else v
                                          for k, v in metadata.items()}
    if bf16:
        import torch
        from safetensors.torch import save_file

        save_file({k: torch.from_numpy(np.ascontiguousarray(v)).to(torch.bfloat16) for k, v in tensors.items()},
                  str(path), metadata=meta)
    else:
        from safetensors.numpy import save_file

        save_file({k: np.ascontiguousarray(v, np.float32) for k, v in tensors.items()}, str(path), metadata=meta)
    return path


def corpus_without(untrained, vocab=16):
    """Bytes containing every id below vocab except the untrained ones."""
    return bytes(t for t in range(vocab) if t not in untrained) * 3


@pytest.fixture
def rigid(tmp_path):
    E, G, L, losses = simulate()
    meta = {"never_seen": UNTRAINED, "sigma": 0.0, "steps": list(range(13)), "complete": "true"}
    return save(tmp_path / "rigid.safetensors", E, G, L, losses, metadata=meta)


# ---------------------------------------------------------------------------- the rigid body


def test_rigid_body_f32_from_metadata(rigid):
    r = analyze(rigid)
    assert r.untrained_tokens == UNTRAINED and r.untrained_source == "metadata"
    assert r.trained_tokens == [t for t in range(16) if t not in UNTRAINED]
    assert r.recorded_steps == list(range(13))
    assert r.identical_all_steps == {"logits": True, "grads": True, "positions": True}
    assert r.first_divergence == {"logits": None, "grads": None, "positions": None}
    assert r.rigid_body and "RIGID BODY" in r.verdict
    # the trained tokens start at the same point (sigma = 0) and leave at step 1
    assert r.trained_first_divergence == {"logits": 1, "grads": 1, "positions": 1}
    assert np.all(r.series["positions_spread"] == 0)
    assert np.all(r.series["speed"][1:] > 0)
    for entry in r.sampled:
        assert entry["positions"]["pairwise_max"] == 0.0
        assert entry["positions"]["verdict"] == "IDENTICAL"


def test_bf16_original_keys_no_metadata_with_corpus(tmp_path):
    E, G, L, _ = simulate(bf16=True)
    path = save(tmp_path / "orig.safetensors", E, G, L, bf16=True)
    r = analyze(path, corpus=corpus_without(UNTRAINED))
    assert r.dtype == "BF16"
    assert r.untrained_tokens == UNTRAINED and r.untrained_source == "corpus"
    assert r.rigid_body
    assert r.never_drawn_tokens is None  # no per-byte counts in an original recording
    text = r.report()
    for heading in ("LOGIT ANALYSIS", "GRADIENT ANALYSIS", "POSITION ANALYSIS", "SUMMARY", "Causal chain:"):
        assert heading in text
    assert "Gradients are IDENTICAL (bit-for-bit)" in text


def test_bf16_identity_is_decided_on_bits_not_values(tmp_path):
    # two bf16 values that widen to different floats; and a recording where a row
    # differs by one ulp must not be called identical
    E, G, L, _ = simulate(bf16=True)
    E[5, UNTRAINED[2], 3] = np.nextafter(E[5, UNTRAINED[2], 3], np.float32(1))  # f32 ulp: lost in bf16
    E[7, UNTRAINED[1], 2] = _round_bf16(E[7, UNTRAINED[1], 2:3] * np.float32(1.01))[0]  # a real bf16 change
    path = save(tmp_path / "ulp.safetensors", E, G, L, bf16=True)
    r = analyze(path, tokens=UNTRAINED)
    assert r.first_divergence["positions"] == 7  # step 5's f32 ulp rounds away when stored as bf16
    assert r.series["positions_identical"][5] == 1.0


def test_nudged_token_names_the_step(tmp_path):
    E, G, L, _ = simulate(steps=30, nudge=(UNTRAINED[2], 17))
    path = save(tmp_path / "nudge.safetensors", E, G, L)
    r = analyze(path, tokens="3,5,7,11", steps="0,16,17,30")
    assert r.first_divergence["positions"] == 17
    assert r.first_divergence["logits"] == 17  # the logit is read off the nudged position
    assert r.first_divergence["grads"] is None  # the toy's gradients stay shared
    assert not r.rigid_body
    assert "step 17" in r.verdict
    assert "first differ at step 17" in r.report()
    assert r.series["positions_identical"][16] == 1.0 and r.series["positions_identical"][17] == 0.0
    assert r.series["positions_spread"][17] == pytest.approx(0.5, rel=1e-6)
    by_step = {e["step"]: e for e in r.sampled}
    assert by_step[16]["positions"]["verdict"] == "IDENTICAL"
    assert by_step[17]["positions"]["verdict"] == "vary"


def test_sign_of_zero_is_not_bit_identical_but_distance_zero(tmp_path):
    E, G, L, _ = simulate(zero_coordinate=True)
    assert E[4, UNTRAINED[1], 0] == 0.0
    E[4, UNTRAINED[1], 0] = -0.0  # same value, different bits
    path = save(tmp_path / "zero.safetensors", E, G, L)
    r = analyze(path, tokens=UNTRAINED, steps=[3, 4])
    assert r.identical_all_steps["positions"] is False
    assert r.first_divergence["positions"] == 4
    assert r.value_equal_not_bitwise["positions"] == [4]
    assert r.series["positions_spread"][4] == 0.0  # ...while every distance is exactly 0
    entry = {e["step"]: e for e in r.sampled}[4]["positions"]
    assert entry["bit_identical"] is False and entry["value_equal"] is True
    assert entry["pairwise_max"] == 0.0 and entry["pairwise_mean"] == 0.0
    assert entry["verdict"] == "equal in value, not bitwise"
    text = r.report()
    assert "NOT bit-identical" in text and "sign of zero" in text


def test_sigma_positive_reports_positions_differ(tmp_path):
    E, G, L, _ = simulate(sigma=0.01, bf16=True)
    path = save(tmp_path / "noisy.safetensors", E, G, L, bf16=True, metadata={"never_seen": UNTRAINED})
    r = analyze(path)
    assert r.identical_all_steps["positions"] is False
    assert r.first_divergence["positions"] == 0
    assert not r.rigid_body and "NOT a rigid body" in r.verdict
    assert "Positions vary" in r.report() or "nearly identical" in r.report()


def test_steps_metadata_maps_training_steps(tmp_path):
    E, G, L, _ = simulate(steps=6, nudge=(UNTRAINED[0], 4))
    steps = [0, 10, 20, 30, 40, 50, 60]  # recorded with --every 10
    path = save(tmp_path / "every.safetensors", E, G, L, metadata={"steps": steps, "never_seen": UNTRAINED})
    r = analyze(path, steps=[0, 10, 15, 40, 100])
    assert r.recorded_steps == steps
    assert [e["step"] for e in r.sampled] == [0, 10, 40]
    assert [e["index"] for e in r.sampled] == [0, 1, 4]
    assert r.skipped_steps == [15, 100]
    assert r.first_divergence["positions"] == 40  # a training step, not an index
    assert any("step 15" in n for n in r.notes) and any("step 100" in n for n in r.notes)
    # speed is per training step: displacement over 10 steps / 10
    assert r.series["speed"][2] == pytest.approx(r.series["displacement"][2] / 10)


def test_freeze_steps_are_reported(tmp_path):
    E, G, L, _ = simulate(freeze=(5, 6, 9))
    path = save(tmp_path / "freeze.safetensors", E, G, L)
    r = analyze(path, tokens=UNTRAINED)
    assert r.freeze["frozen_steps"] == [5, 6, 9]
    assert r.freeze["frozen_with_gradient"] == [5, 6, 9]  # pushed, yet no bit moved
    assert r.series["speed"][5] == 0.0 and r.series["frozen_fraction"][5] == 1.0
    assert r.series["update_ulps_median"][5] == 0.0 and r.series["update_ulps_median"][4] > 1
    assert r.rigid_body  # frozen together is still together
    assert "Frozen" in r.report()


def test_never_drawn_tokens_are_a_second_set(tmp_path):
    E, G, L, _ = simulate()
    # token 9 is in the corpus but was never drawn (input 0, target 0): it moved with the hole;
    # token 12 was drawn only as a target: not in the set
    for arr in (E, G, L):
        arr[:, 9] = arr[:, UNTRAINED[0]]
    inputs = [5] * 16
    targets = [5] * 16
    for t in UNTRAINED + [9]:
        inputs[t] = targets[t] = 0
    inputs[12] = 0
    meta = {"input_counts": inputs, "target_counts": targets}
    path = save(tmp_path / "drawn.safetensors", E, G, L, metadata=meta)
    r = analyze(path, corpus=corpus_without(UNTRAINED))
    assert r.never_drawn_tokens == [9]
    assert r.never_drawn["stays_in_hole"] is True
    assert "never drawn into a batch: 1 (9)" in r.report()


def test_never_drawn_token_that_leaves(tmp_path):
    E, G, L, _ = simulate()
    meta = {"input_counts": [0 if t in (2,) + tuple(UNTRAINED) else 1 for t in range(16)],
            "target_counts": [0 if t in (2,) + tuple(UNTRAINED) else 1 for t in range(16)]}
    path = save(tmp_path / "leave.safetensors", E, G, L, metadata=meta)
    r = analyze(path, tokens=UNTRAINED)
    assert r.never_drawn_tokens == [2]
    assert r.never_drawn["stays_in_hole"] is False
    assert r.never_drawn["first_divergence"]["positions"] == 1


def test_json_is_strict_and_complete(rigid, tmp_path):
    doc = analyze(rigid).to_json()
    text = json.dumps(doc, allow_nan=False)  # no NaN anywhere
    doc = json.loads(text)
    for key in ("untrained_tokens", "trained_tokens", "recorded_steps", "identical_all_steps",
                "first_divergence", "series", "freeze", "verdict"):
        assert key in doc
    assert set(doc["identical_all_steps"]) == {"logits", "grads", "positions"}
    assert doc["series"]["grads_spread"][0] is None  # no gradient at the initialisation
    assert doc["series"]["positions_identical"] == [True] * 13
    assert doc["series"]["step"] == list(range(13))
    assert len(doc["series"]["speed"]) == 13 and doc["series"]["speed"][0] is None


def test_exact_pairwise_distances_of_identical_rows_are_zero():
    rng = np.random.default_rng(1)
    row = (rng.standard_normal(64) * 100).astype(np.float32)
    x = np.tile(row, (49, 1))
    d = _pairwise(x)
    assert d.shape == (49 * 48 // 2,) and np.all(d == 0.0)
    y = x.copy()
    y[3, 7] += 1.0
    assert _pairwise(y).max() == pytest.approx(1.0)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(width=32, allow_nan=False), min_size=2, max_size=20))
def test_order_key_sorts_like_floats(values):
    f = np.asarray(values, np.float32)
    keys = ulp_key(f.view(np.uint32), "F32", native=True)
    s = f[np.argsort(keys, kind="stable")]
    assert np.all(s[:-1] <= s[1:])
    assert np.array_equal(key_bits(keys, "F32"), f.view(np.uint32))  # the inverse gives the bits back


def test_public_helpers_shared_with_reproduce():
    from blackholes.pipelines import reproduce as report
    from blackholes.analysis.dynamics import finite_or_none, never_drawn_tokens
    from blackholes.analysis.ids import format_bytes, format_ids

    assert format_ids([0, 1, 2, 5, 7, 8]) == "0-2, 5, 7-8"
    assert format_bytes([65, 0, 32, 96, 300]) == "A \\x00 \\x20 \\x60 300"
    assert format_bytes(list(range(65, 70)), limit=2) == "A B … (+3)"
    meta = {"input_counts": [0, 0, 5, 0], "target_counts": [0, 0, 0, 2]}
    assert never_drawn_tokens(meta, untrained=[0]) == [1]
    assert never_drawn_tokens(meta, vocab=5) is None and never_drawn_tokens({}) is None
    assert (finite_or_none(np.float32(2.5)), finite_or_none(np.nan), finite_or_none("x")) == (2.5, None, None)
    # reproduce uses these very functions, not copies of its own
    assert report.format_bytes is format_bytes and report.never_drawn_tokens is never_drawn_tokens
    assert report.finite_or_none is finite_or_none
    for copy in ("_fmt_tokens", "_never_drawn", "_finite", "_metadata"):
        assert not hasattr(report, copy)


def test_ranges_are_bounded_before_they_are_expanded():
    assert parse_tokens("0-3,10", vocab=16) == [0, 1, 2, 3, 10]
    with pytest.raises(BlackholesError, match="outside the vocabulary"):
        parse_tokens("0-1000000000", vocab=16)
    assert parse_steps("0-2,99", last=10) == [0, 1, 2, 99]  # a single step beyond the end: skipped later
    with pytest.raises(BlackholesError, match="beyond the recording's last step 10"):
        parse_steps("5-1000000000", last=10)


def test_parse_ids():
    assert parse_tokens("1,2,5-9") == [1, 2, 5, 6, 7, 8, 9]
    assert parse_steps("10,0,1") == [0, 1, 10]
    for bad in ("a", "5-2", "-1", ""):
        with pytest.raises(BlackholesError):
            parse_tokens(bad)


# ---------------------------------------------------------------------------- CLI


def test_cli_end_to_end(rigid, tmp_path, capsys):
    out = tmp_path / "d.json"
    plots = tmp_path / "plots"
    assert main(["dynamics", str(rigid), "--json", str(out), "--plots", str(plots), "--steps", "0,1,12,99"]) == 0
    text = capsys.readouterr().out
    assert "Untrained (black hole): 4 tokens" in text and "step 99" in text
    assert json.loads(out.read_text())["identical_all_steps"]["positions"] is True
    pngs = sorted(p.name for p in plots.iterdir())
    assert pngs == ["dynamics_logits.png", "dynamics_speed.png", "dynamics_spread.png"]
    for p in plots.iterdir():
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["dynamics", str(rigid), "--quiet"]) == 0
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize("first_nan", [1, 2])
def test_recording_that_goes_nan_gives_one_clean_report(tmp_path, capsys, first_nan):
    """A diverged run (embeddings NaN from some step on) is reported, not a crash, and without warnings."""
    import warnings

    E, G, L, losses = simulate()
    E[first_nan:] = np.nan
    G[first_nan:] = np.nan
    rec = save(tmp_path / "nan.safetensors", E, G, L, losses, metadata={"never_seen": UNTRAINED})
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # numpy's all-NaN RuntimeWarning would fail here
        assert main(["dynamics", str(rec)]) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    assert f"not finite (NaN or inf) at {13 - first_nan} step(s), first at step {first_nan}" in captured.out
    assert captured.out.count("SUMMARY") == 1
    if first_nan == 2:  # the first update is finite, the last is not
        assert "not finite at the last" in captured.out


def test_metadata_value_that_is_not_a_string_is_taken_as_given(tmp_path, capsys):
    """Some tools write ``"sigma": 0`` (not ``"0"``) into __metadata__: read it, say so, no traceback."""
    E, G, L, losses = simulate()
    path = save(tmp_path / "ok.safetensors", E, G, L, losses, metadata={"never_seen": UNTRAINED})
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    doc = json.loads(raw[8:8 + n])
    doc["__metadata__"]["sigma"] = 0
    doc["__metadata__"]["never_seen"] = UNTRAINED  # a real JSON list, not its text
    header = json.dumps(doc).encode()
    header += b" " * (-len(header) % 8)
    odd = tmp_path / "odd.safetensors"
    odd.write_bytes(len(header).to_bytes(8, "little") + header + raw[8 + n:])

    assert main(["dynamics", str(odd)]) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    note = next(line for line in captured.out.splitlines() if "not stored as text" in line)
    assert "sigma=0" in captured.out and "'sigma'" in note and "'never_seen'" in note
    result = analyze(odd)
    assert result.untrained_tokens == UNTRAINED and result.metadata["sigma"] == 0 and result.rigid_body


def _error(argv, capsys) -> str:
    return assert_one_line_error(main(argv), capsys.readouterr().err)


def test_bad_inputs_give_one_line(tmp_path, capsys):
    E, G, L, _ = simulate(steps=4)
    ok = save(tmp_path / "ok.safetensors", E, G, L)
    missing = save(tmp_path / "missing.safetensors", E, G, L, drop=("grads",))
    bad_shape = save(tmp_path / "shape.safetensors", E, G[:-1], L)
    bad_logits = save(tmp_path / "logits.safetensors", E, G, L[:, :-1])
    bad_steps = save(tmp_path / "steps.safetensors", E, G, L, metadata={"steps": [0, 1, 2]})
    corpus = tmp_path / "c.txt"
    corpus.write_bytes(b"hello \xc8")
    full = tmp_path / "full.txt"
    full.write_bytes(bytes(range(16)))

    assert "missing tensor(s) grads" in _error(["dynamics", str(missing), "--tokens", "1,2"], capsys)
    assert "shapes disagree" in _error(["dynamics", str(bad_shape), "--tokens", "1,2"], capsys)
    assert "shapes disagree" in _error(["dynamics", str(bad_logits), "--tokens", "1,2"], capsys)
    assert "'steps'" in _error(["dynamics", str(bad_steps), "--tokens", "1,2"], capsys)
    assert "outside the vocabulary" in _error(["dynamics", str(ok), "--corpus", str(corpus)], capsys)
    assert "no untrained tokens" in _error(["dynamics", str(ok), "--corpus", str(full)], capsys)
    assert "never_seen" in _error(["dynamics", str(ok)], capsys)
    assert "outside the vocabulary" in _error(["dynamics", str(ok), "--tokens", "1,99"], capsys)
    assert "bad step list" in _error(["dynamics", str(ok), "--tokens", "1,2", "--steps", "x"], capsys)
    assert "no such file" in _error(["dynamics", str(tmp_path / "nope.safetensors")], capsys)
    assert "no such corpus" in _error(["dynamics", str(ok), "--corpus", str(tmp_path / "nope.txt")], capsys)
    assert "at least two" in _error(["dynamics", str(ok), "--tokens", "4"], capsys)
    # huge ranges are refused before they are expanded (no MemoryError, no hang)
    assert "token id 10000000000000 is outside the vocabulary (0-15)" in _error(
        ["dynamics", str(ok), "--tokens", "0-10000000000000"], capsys)
    assert "step range '0-10000000000000' goes beyond the recording's last step 4" in _error(
        ["dynamics", str(ok), "--tokens", "1,2", "--steps", "0-10000000000000"], capsys)
    assert "does not exist" in _error(["dynamics", str(ok), "--tokens", "1,2", "--json",
                                       str(tmp_path / "no" / "d.json")], capsys)


def test_gatsby_corpus_names_49_untrained_bytes(tmp_path):
    corpus = SHARED / "data" / "gatsby_clean.txt"
    if not corpus.is_file():
        pytest.skip(f"shared corpus not available at {corpus}")
    data = corpus.read_bytes()
    untrained = sorted(set(range(128)) - set(data))
    E, G, L, _ = simulate(steps=3, vocab=128, dim=4, untrained=untrained)
    path = save(tmp_path / "gatsby.safetensors", E, G, L, bf16=True)
    r = analyze(path, corpus=corpus)
    assert len(r.untrained_tokens) == 49 and len(r.trained_tokens) == 79
    assert r.untrained_tokens == untrained and r.rigid_body


def test_verdict_names_the_broken_link(tmp_path):
    E, G, L, _ = simulate()
    G[6, UNTRAINED[1]] += np.float32(0.1)  # e.g. the token was drawn as a target at step 6
    E[6:, UNTRAINED[1]] += np.float32(0.005)
    path = save(tmp_path / "link.safetensors", E, G, L)
    r = analyze(path, tokens=UNTRAINED)
    assert r.first_divergence == {"logits": None, "grads": 6, "positions": 6}
    assert "step 6" in r.verdict and "link 3" in r.verdict


def test_ulp_of_each_dtype():
    x = np.array([1.0, 0.25, -3.0, 0.0])
    assert list(_ulp(x, "BF16")) == [2.0**-7, 2.0**-9, 2.0**-6, 2.0**-133]
    assert list(_ulp(x[:3], "F32")) == [2.0**-23, 2.0**-25, 2.0**-22]


def test_analysis_imports_neither_torch_nor_matplotlib(rigid):
    import subprocess
    import sys

    code = ("import sys; from blackholes.analysis.dynamics import analyze; analyze(sys.argv[1]).report(); "
            "print('torch' in sys.modules, 'matplotlib' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code, str(rigid)], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


@pytest.mark.parametrize("sigma", [0.0, 0.01])
def test_recording_from_blackholes_train(tmp_path, sigma):
    train_mod = pytest.importorskip("blackholes.training.loop")
    corpus = tmp_path / "corpus.txt"
    corpus.write_bytes(b"the quick brown fox jumps over the lazy dog. " * 20)
    config = train_mod.TrainConfig(corpus=str(corpus), sigma=sigma, steps=12, width=16, layers=1, heads=1,
                                   context=16, compile=False, threads=1)
    try:
        train_mod.train(config, tmp_path / "run.safetensors", progress=False)
    except NotImplementedError:
        pytest.skip("blackholes.train is not implemented yet")
    r = analyze(tmp_path / "run.safetensors")  # untrained = the recording's never_seen metadata
    assert r.untrained_source == "metadata"
    assert r.untrained_tokens == sorted(set(range(128)) - set(corpus.read_bytes()))
    assert r.recorded_steps == list(range(13))
    if sigma == 0:
        assert r.rigid_body and r.first_divergence == {"logits": None, "grads": None, "positions": None}
    else:
        assert not r.rigid_body and r.first_divergence["positions"] == 0


def test_interrupted_recording_is_noted(tmp_path):
    E, G, L, _ = simulate(steps=5)
    meta = {"never_seen": UNTRAINED, "complete": False, "interrupted_at_step": 5}
    r = analyze(save(tmp_path / "cut.safetensors", E, G, L, metadata=meta))
    assert any("interrupted at step 5" in n for n in r.notes)
    assert "interrupted at step 5" in r.report()


@pytest.mark.parametrize("bf16", [False, True])
def test_per_step_series_match_brute_force(tmp_path, bf16):
    rng = np.random.default_rng(7)
    n, vocab, dim = 40, 12, 5
    E = rng.standard_normal((n, vocab, dim)).astype(np.float32)
    G = rng.standard_normal((n, vocab, dim)).astype(np.float32)
    L = rng.standard_normal((n, vocab)).astype(np.float32)
    U = [1, 4, 9]
    for arr in (E, G, L):
        arr[:, U] = arr[:, U[:1]]  # identical rows...
        broken = rng.choice(n, 8, replace=False)
        arr[broken, U[2]] = -arr[broken, U[2]]  # ...except at some steps
        arr[broken[:2], U[1]] = 0.0
        arr[broken[:2], U[0]] = -0.0  # and a pure sign-of-zero difference
    if bf16:
        E, G, L = (_round_bf16(a) for a in (E, G, L))
    r = analyze(save(tmp_path / "rand.safetensors", E, G, L, bf16=bf16), tokens=U)
    for q, arr in (("positions", E), ("grads", G), ("logits", L)):
        rows = arr[:, U].reshape(n, len(U), -1)
        bits = rows.view(np.uint32)
        same = (bits == bits[:, :1]).all(axis=(1, 2))
        spread = np.abs(rows.astype(np.float64) - rows[:, :1].astype(np.float64)).max(axis=(1, 2))
        start = 1 if q == "grads" else 0
        assert np.array_equal(r.series[f"{q}_identical"][start:] == 1, same[start:])
        assert np.array_equal(r.series[f"{q}_spread"][start:], spread[start:])
