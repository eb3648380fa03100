"""Training from one shared point: the recording, its invariants, interruption, determinism.

Most tests use a small model run eagerly (``compile=False``) for speed; one runs the
compiled default path.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from blackholes.errors import BlackholesError
from support import GATSBY
from blackholes.training.model import GPT, GPTConfig
from blackholes.io.recording import read_recording_metadata
from blackholes.training.loop import TrainConfig, default_corpus_path, train, window_starts

KEYS = ("embeddings", "grads", "logits", "momentum", "variance")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """3,000 bytes over 12 byte values (3..14): the other 20 of a 32-byte vocabulary never occur."""
    rng = np.random.default_rng(0)
    alphabet = np.arange(3, 15, dtype=np.uint8)
    path = tmp_path_factory.mktemp("corpus") / "small.txt"
    path.write_bytes(alphabet[rng.integers(0, len(alphabet), 3000)].tobytes())
    return path


def small(corpus, **kw) -> TrainConfig:
    base = dict(corpus=str(corpus), steps=12, vocab=32, context=16, width=16, layers=1, heads=2)  # eager: the default
    return TrainConfig(**{**base, **kw})


def bits(t: torch.Tensor) -> torch.Tensor:
    """Raw bits, so equality means bit identity (NaN == NaN, -0 != +0)."""
    return t.view(torch.int16) if t.dtype == torch.bfloat16 else t.view(torch.int32)


def all_rows_identical(t: torch.Tensor, rows: list[int]) -> bool:
    """At every record, are the given rows (dim 1) bit-identical?"""
    b = bits(t)[:, rows]
    return bool((b == b[:, :1]).all())


def distinct_rows(t: torch.Tensor) -> int:
    return torch.unique(bits(t).reshape(t.shape[0], -1), dim=0).shape[0]


@pytest.fixture(scope="module")
def run(corpus, tmp_path_factory):
    path = tmp_path_factory.mktemp("run") / "run.safetensors"
    result = train(small(corpus), path, progress=False)
    return result, load_file(path)


# ---------------------------------------------------------------------------- format


def test_recording_has_the_contract_keys_shapes_and_dtype(run):
    result, data = run
    assert set(data) == {"embeddings", "grads", "logits", "losses", "momentum", "variance", "grad_norms"}
    for key in ("embeddings", "grads", "momentum", "variance"):
        assert data[key].shape == (13, 32, 16) and data[key].dtype == torch.bfloat16
    assert data["logits"].shape == (13, 32) and data["losses"].shape == (13,)
    assert torch.isnan(data["losses"][0]) and torch.isfinite(data["losses"][1:].float()).all()
    for key in ("grads", "logits", "momentum", "variance"):
        assert not bits(data[key][0]).any(), key  # record 0 = initialisation: zeros
    assert result.steps_done == 12 and not result.interrupted and result.path.exists()
    assert abs(result.final_loss - data["losses"][-1].item()) < 1e-6


def test_metadata_follows_the_contract(run, corpus):
    result, data = run
    meta = read_recording_metadata(result.path)
    assert meta["complete"] is True and meta["steps"] == list(range(13))
    assert meta["sigma"] == 0.0 and meta["seed"] == 0 and meta["dtype"] == "bf16"
    assert meta["config"]["width"] == 16 and meta["config"]["lr"] == 1e-3 and meta["config"]["clip"] == 1.0
    text = corpus.read_bytes()
    assert meta["corpus_sha256"] == hashlib.sha256(text).hexdigest()
    assert meta["never_seen"] == result.never_seen == sorted(set(range(32)) - set(text))
    assert len(meta["never_seen"]) == 20
    inputs, targets = np.array(meta["input_counts"]), np.array(meta["target_counts"])
    assert inputs.sum() == targets.sum() == 12 * 16  # steps x context
    assert not inputs[meta["never_seen"]].any() and not targets[meta["never_seen"]].any()
    # the counts are the windows actually drawn
    starts = window_starts(small(corpus), len(text))
    arr = np.frombuffer(text, np.uint8)
    expected = np.bincount(np.concatenate([arr[s : s + 16] for s in starts[:, 0]]), minlength=32)
    np.testing.assert_array_equal(inputs, expected)
    assert len(meta["centre"]) == 16
    # sigma = 0: every initial row is the centre rounded to bf16
    centre = torch.tensor(meta["centre"], dtype=torch.float32).to(torch.bfloat16)
    assert torch.equal(bits(data["embeddings"][0]), bits(centre).expand(32, 16))


def test_the_seed_notebooks_loading_code_reads_the_file(run):
    result, _ = run
    data = load_file(str(result.path))  # as in 1.14b2, unchanged
    embeddings = data["embeddings"].float()
    gradients = data["grads"].float()
    logits = data["logits"].float()
    n_steps, vocab_size, hidden_dim = embeddings.shape
    assert (n_steps, vocab_size, hidden_dim) == (13, 32, 16)
    untrained = torch.tensor(result.never_seen, dtype=torch.long)
    assert logits[5, untrained].std().item() == 0.0
    assert torch.cdist(gradients[5, untrained], gradients[5, untrained]).max().item() == 0.0


# ---------------------------------------------------------------------------- black holes


def test_sigma_zero_keeps_never_seen_bytes_bit_identical_everywhere(run):
    result, data = run
    never = result.never_seen
    seen = sorted(set(range(32)) - set(never))
    for key in KEYS:
        assert all_rows_identical(data[key], never), key
    # ...while the bytes the corpus contains separate from the hole and from each other
    final = data["embeddings"][-1]
    assert distinct_rows(final[seen].unsqueeze(0).transpose(0, 1)) == len(seen)
    assert not (bits(final[seen]) == bits(final[never[0]])).all(dim=1).any()
    assert distinct_rows(data["embeddings"][0].unsqueeze(1)) == 1  # one point at the start


def test_sigma_positive_starts_apart(corpus, tmp_path):
    result = train(small(corpus, sigma=0.02, steps=3), tmp_path / "r.safetensors", progress=False)
    data = load_file(result.path)
    assert distinct_rows(data["embeddings"][0].unsqueeze(1)) == 32
    assert not all_rows_identical(data["embeddings"], result.never_seen)


def test_fp32_recording(corpus, tmp_path):
    result = train(small(corpus, dtype="fp32", steps=4), tmp_path / "r.safetensors", progress=False)
    data = load_file(result.path)
    assert all(t.dtype == torch.float32 for t in data.values())
    for key in KEYS:
        assert all_rows_identical(data[key], result.never_seen), key


# ---------------------------------------------------------------------------- exact recomputation


def test_recorded_gradients_match_an_independent_autograd_computation(corpus, tmp_path):
    """Replay the run in a plain loop (fp32) and compare every recorded tensor at every step."""
    config = small(corpus, dtype="fp32", steps=6, sigma=0.01, seed=5)
    data = load_file(train(config, tmp_path / "r.safetensors", progress=False).path)

    text = np.frombuffer(corpus.read_bytes(), np.uint8).astype(np.int64)
    starts = window_starts(config, len(text))
    model = GPT(GPTConfig(vocab=32, context=16, width=16, layers=1, heads=2))
    model.init_weights(0.01, torch.Generator().manual_seed(5))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, fused=True)
    W = model.wte.weight
    assert torch.equal(W.detach(), data["embeddings"][0])
    for step in range(1, 7):
        window = torch.from_numpy(text[starts[step - 1, 0] : starts[step - 1, 0] + 17])
        x, y = window[:-1][None], window[1:][None]
        # the loss written out by hand: mean negative log-likelihood of the next byte
        logits = model(x)[0]
        loss = -logits.log_softmax(-1)[torch.arange(16), y[0]].mean()
        (grad,) = torch.autograd.grad(loss, W, retain_graph=True)
        torch.testing.assert_close(data["grads"][step], grad, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(data["logits"][step], logits[-1].detach(), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(data["losses"][step], loss.detach(), rtol=1e-5, atol=1e-6)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        for g in opt.param_groups:
            g["lr"] = 1e-3 * (1 - (step - 1) / 6)
        opt.step()
        state = opt.state[W]
        torch.testing.assert_close(data["embeddings"][step], W.detach(), rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(data["momentum"][step], state["exp_avg"], rtol=1e-5, atol=1e-8)
        torch.testing.assert_close(data["variance"][step], state["exp_avg_sq"], rtol=1e-5, atol=1e-10)


# ---------------------------------------------------------------------------- options


def test_same_arguments_give_a_byte_identical_file(corpus, tmp_path):
    a = train(small(corpus, sigma=0.01, steps=8), tmp_path / "a.safetensors", progress=False).path
    b = train(small(corpus, sigma=0.01, steps=8), tmp_path / "b.safetensors", progress=False).path
    c = train(small(corpus, sigma=0.01, steps=8, seed=1), tmp_path / "c.safetensors", progress=False).path
    assert a.read_bytes() == b.read_bytes()
    assert a.read_bytes() != c.read_bytes()


def test_every_records_every_kth_step_and_the_last(corpus, tmp_path, run):
    _, full = run
    result = train(small(corpus, every=5), tmp_path / "r.safetensors", progress=False)
    data = load_file(result.path)
    steps = [0, 5, 10, 12]
    assert read_recording_metadata(result.path)["steps"] == steps == result.recorded_steps
    for key, value in data.items():
        assert value.shape[0] == 4
        assert torch.equal(bits(value), bits(full[key][steps])), key  # same run, fewer records


def test_no_optimizer_state(corpus, tmp_path):
    result = train(small(corpus, steps=3, optimizer_state=False), tmp_path / "r.safetensors", progress=False)
    assert set(load_file(result.path)) == {"embeddings", "grads", "logits", "losses", "grad_norms"}
    assert read_recording_metadata(result.path)["config"]["optimizer_state"] is False


def test_default_corpus_ships_and_trains(tmp_path):
    text = default_corpus_path().read_bytes()
    assert max(text) < 128 and 40 <= len(set(text)) <= 70  # ASCII, a good share of bytes unused
    config = TrainConfig(steps=2, vocab=128, context=32, width=16, layers=1, heads=2, compile=False)
    result = train(config, tmp_path / "r.safetensors", progress=False)
    assert len(result.never_seen) == 128 - len(set(text))


# ---------------------------------------------------------------------------- interruption


class Stop:
    def __init__(self, at: int):
        self.at = at

    def __call__(self, step: int) -> None:
        if step == self.at:
            raise KeyboardInterrupt


@pytest.mark.parametrize("every,stop_at", [(1, 7), (5, 7), (1, 1)])
def test_interrupted_run_keeps_a_valid_recording_of_the_steps_done(corpus, tmp_path, run, every, stop_at):
    _, full = run
    out = tmp_path / "r.safetensors"
    result = train(small(corpus, every=every), out, progress=False, on_step=Stop(stop_at))
    assert result.interrupted and result.steps_done == stop_at
    data = load_file(out)  # a valid safetensors file
    meta = read_recording_metadata(out)
    assert meta["complete"] is False and meta["interrupted_at_step"] == stop_at
    steps = [s for s in range(0, 13, every) if s <= stop_at]
    assert meta["steps"] == steps == result.recorded_steps
    for key, value in data.items():
        assert torch.equal(bits(value), bits(full[key][steps])), key
    assert sum(meta["input_counts"]) == stop_at * 16
    assert list(tmp_path.iterdir()) == [out]  # no temporary file left behind


def test_other_errors_leave_no_file(corpus, tmp_path):
    def fail(step):
        if step == 3:
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        train(small(corpus), tmp_path / "r.safetensors", progress=False, on_step=fail)
    assert list(tmp_path.iterdir()) == []


def test_ctrl_c_on_the_command_line_leaves_a_valid_file_or_none(corpus, tmp_path):
    out = tmp_path / "r.safetensors"
    cmd = [sys.executable, "-m", "blackholes", "train", "--corpus", str(corpus), "--out", str(out),
           "--steps", "1000000", "--vocab", "32", "--context", "16", "--width", "16", "--layers", "1",
           "--no-compile", "--every", "10", "--quiet"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not any(p.name.endswith(".tmp") for p in tmp_path.iterdir()):  # training has started
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "interrupted after" in err
    assert [p.name for p in tmp_path.iterdir()] == ["r.safetensors"]
    data = load_file(out)
    meta = read_recording_metadata(out)
    assert meta["complete"] is False and data["embeddings"].shape[0] == len(meta["steps"]) >= 1
    assert all_rows_identical(data["embeddings"], meta["never_seen"])


# ---------------------------------------------------------------------------- bad input


def run_cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "blackholes", "train", *args], capture_output=True, text=True)


def test_command_line_run_prints_a_summary_and_no_warnings(corpus, tmp_path):
    out = tmp_path / "r.safetensors"
    p = run_cli("--corpus", str(corpus), "--out", str(out), "--steps", "70", "--vocab", "32", "--context", "16",
                "--width", "16", "--layers", "1", "--no-compile", "--every", "7")
    assert p.returncode == 0, p.stderr
    assert "Trained 70 steps" in p.stdout and "11 records written" in p.stdout
    assert "Warning" not in p.stderr and "Traceback" not in p.stderr
    assert "loss" in p.stderr  # the progress bar
    assert load_file(out)["embeddings"].shape == (11, 32, 16)


def test_byte_outside_the_vocabulary_is_a_one_line_error(tmp_path):
    path = tmp_path / "utf8.txt"
    path.write_bytes(("caf\u00e9 " * 100).encode("utf-8"))
    out = tmp_path / "r.safetensors"
    p = run_cli("--corpus", str(path), "--out", str(out), "--steps", "2")
    assert p.returncode == 2
    assert p.stderr.count("\n") == 1 and "0xc3 at offset 3" in p.stderr and "--vocab" in p.stderr
    assert not out.exists()
    config = TrainConfig(corpus=str(path), steps=2, vocab=256, context=16, width=16, layers=1, compile=False)
    assert len(train(config, out, progress=False).never_seen) == 256 - 6  # c a f 0xc3 0xa9 space


@pytest.mark.parametrize(
    "args,message",
    [
        (["--steps", "0"], "--steps must be an integer >= 1"),
        (["--sigma", "-1"], "--sigma must be"),
        (["--width", "10", "--heads", "3"], "divisible"),
        (["--corpus", "/nonexistent/corpus.txt"], "no such corpus file"),
    ],
)
def test_bad_arguments_are_one_line_errors(tmp_path, args, message):
    p = run_cli("--out", str(tmp_path / "r.safetensors"), *args)
    assert p.returncode == 2 and message in p.stderr and "Traceback" not in p.stderr


def test_path_objects_and_numpy_integers_are_welcome(corpus, tmp_path):
    config = small(corpus, steps=np.int64(2))
    config.corpus = Path(corpus)
    result = train(config, tmp_path / "r.safetensors", progress=False)
    assert read_recording_metadata(result.path)["config"]["corpus"] == str(corpus)


def test_output_that_is_a_directory_fails_before_training(corpus, tmp_path):
    with pytest.raises(BlackholesError, match="--out must be a file path"):
        train(small(corpus, steps=1), tmp_path, progress=False)


def test_missing_output_directory_is_an_error(corpus, tmp_path):
    with pytest.raises(BlackholesError, match="output directory does not exist"):
        train(small(corpus, steps=1), tmp_path / "nope" / "r.safetensors", progress=False)


# ---------------------------------------------------------------------------- compiled path, real corpus


def test_compiled_default_path_keeps_the_hole(corpus, tmp_path):
    from torch._dynamo.utils import counters

    result = train(small(corpus, compile=True, steps=6), tmp_path / "r.safetensors", progress=False)
    meta = read_recording_metadata(result.path)
    assert result.compiled and meta["compiled"] is True and meta["numerics"] == meta["config"]["numerics"] == "compiled"
    graphs = counters["stats"]["unique_graphs"]
    again = train(small(corpus, compile=True, steps=6), tmp_path / "again.safetensors", progress=False)
    assert counters["stats"]["unique_graphs"] == graphs  # a second run reuses the compiled graph
    assert again.path.read_bytes() == result.path.read_bytes()
    data = load_file(result.path)
    for key in KEYS:
        assert all_rows_identical(data[key], result.never_seen), key


def test_compiled_run_compiles_once(corpus, tmp_path):
    """The probe in _compile_step compiles for the loop's exact inputs: no second compilation at step 1."""
    from torch._dynamo.utils import counters

    before = train(small(corpus, compile=True, steps=6), tmp_path / "a.safetensors", progress=False).path
    graphs = counters["stats"]["unique_graphs"]
    config = small(corpus, compile=True, steps=3, width=24, heads=3)  # a shape no other test compiles
    assert train(config, tmp_path / "r.safetensors", progress=False).compiled
    assert counters["stats"]["unique_graphs"] == graphs + 1
    # The loop skips dynamo's guard checks: with two shapes compiled, each run must still get its own graph.
    after = train(small(corpus, compile=True, steps=6), tmp_path / "b.safetensors", progress=False).path
    assert after.read_bytes() == before.read_bytes()
    assert counters["stats"]["unique_graphs"] == graphs + 1


def test_without_a_working_compiler_compiled_numerics_are_refused_not_swapped_for_eager(corpus, tmp_path,
                                                                                       monkeypatch):
    """Compiled numerics round differently from eager ones: falling back would train another recipe."""
    def broken_compile(fn, **kw):
        def call(*a):
            raise RuntimeError("InvalidCxxCompiler: No working C++ compiler found")
        return call

    monkeypatch.setattr(torch, "compile", broken_compile)
    monkeypatch.setattr("blackholes.training.loop._COMPILED", {})  # no graph compiled by an earlier test
    with pytest.raises(BlackholesError, match="--numerics compiled needs torch.compile.*InvalidCxxCompiler"):
        train(small(corpus, numerics="compiled", steps=3), tmp_path / "r.safetensors", progress=False)
    assert not (tmp_path / "r.safetensors").exists()
    eager = train(small(corpus, steps=3), tmp_path / "e.safetensors", progress=False)  # eager needs no compiler
    assert not eager.compiled and read_recording_metadata(eager.path)["numerics"] == "eager"


@pytest.mark.skipif(not GATSBY.exists(), reason=f"shared corpus not found at {GATSBY}")
def test_gatsby_sigma_zero_leaves_the_49_never_seen_bytes_on_one_vector(tmp_path):
    config = TrainConfig(corpus=str(GATSBY), sigma=0.0, steps=20, compile=False)
    result = train(config, tmp_path / "gatsby.safetensors", progress=False)
    assert len(result.never_seen) == 49
    data = load_file(result.path)
    for key in KEYS:
        assert all_rows_identical(data[key], result.never_seen), key
    assert read_recording_metadata(result.path)["corpus_sha256"] == (
        "c774efbbdbbd41711bdab8bf79f37f3451606da188b13d1a472f1f7e0a2ce931"
    )
