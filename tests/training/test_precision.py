"""Precision modes: bf16 (the original), fp32, bf16-mixed (fp32 master weights + bf16 autocast)."""

from __future__ import annotations

import numpy as np
import pytest

from blackholes.errors import BlackholesError
from blackholes.training.loop import TrainConfig, train
from blackholes.training.precision import PRECISIONS, precision
from blackholes.io.recording import Recording
from support import assert_one_line_error, run_blackholes
from train_helpers import SMALL_CLI, bits, small, write_corpus


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("precision") / "c.txt")


@pytest.fixture(scope="module")
def mixed(corpus, tmp_path_factory):
    """An eager bf16-mixed run, sigma > 0 so every row moves on its own."""
    path = tmp_path_factory.mktemp("mixed") / "mixed.safetensors"
    train(small(corpus, precision="bf16-mixed", sigma=0.01, steps=8), path, progress=False)
    return Recording(path)


@pytest.mark.parametrize("mode", list(PRECISIONS))
def test_every_precision_is_bit_for_bit_deterministic(corpus, tmp_path, mode):
    a = train(small(corpus, precision=mode, sigma=0.01, steps=6), tmp_path / "a.safetensors", progress=False)
    b = train(small(corpus, precision=mode, sigma=0.01, steps=6), tmp_path / "b.safetensors", progress=False)
    assert a.path.read_bytes() == b.path.read_bytes()
    rec = Recording(a.path)
    assert rec.metadata["precision"] == rec.metadata["dtype"] == mode == a.precision
    assert rec.dtype == precision(mode).record_dtype and rec.complete is True
    assert ("embeddings_bf16" in rec) == (mode == "bf16-mixed")


def test_mixed_records_fp32_masters_and_the_bf16_copy_the_forward_reads(mixed):
    import torch

    assert {mixed.dtype_of(k) for k in mixed.keys if k != "embeddings_bf16"} == {"F32"}
    assert mixed.dtype_of("embeddings_bf16") == "BF16"
    masters = torch.from_numpy(np.array(mixed.tensor("embeddings")))
    rounded = masters.to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    assert np.array_equal(rounded, mixed.tensor("embeddings_bf16"))  # the copy is the masters, rounded
    assert not np.array_equal(masters.to(torch.bfloat16).float().numpy(), masters.numpy())  # fp32 is finer
    logits = torch.from_numpy(np.array(mixed.tensor("logits")))
    assert torch.equal(logits.to(torch.bfloat16).float(), logits)  # the forward ran in bf16 (autocast)


def _adamw_step(w, m, v, g, norm, step, fused, lr=1e-3, steps=8, beta1=0.9, beta2=0.999, eps=1e-8):
    """One AdamW step written out in float32 numpy, from the recorded gradient before clipping.

    torch's fused CPU kernel computes m and v with fused multiply-adds when the CPU has
    them (``fused=True``) and with separately rounded operations otherwise; both are
    written out here, so the comparison can be bit for bit either way.
    """
    f32 = np.float32
    g = g * np.minimum(f32(1.0) / (norm + f32(1e-6)), f32(1.0))  # clip_grad_norm_(max_norm=1)

    def fma(a, b, c):  # a*b + c rounded once: the float64 product of two float32 is exact
        return (a.astype(np.float64) * b.astype(np.float64) + c.astype(np.float64)).astype(np.float32)

    if fused:
        m = fma(np.full_like(g, f32(1 - beta1)), g - m, m)  # exp_avg.lerp_(grad, 1 - beta1)
        v = fma(f32(1 - beta2) * g, g, v * f32(beta2))
    else:
        m = m + f32(1 - beta1) * (g - m)
        v = v * f32(beta2) + f32(1 - beta2) * g * g
    step_lr = lr * (1 - (step - 1) / steps)
    step_size = step_lr / (1 - beta1**step)  # in float64, as the kernel
    denom = np.sqrt(v) / f32(np.sqrt(1 - beta2**step)) + f32(eps)
    return w + (f32(-step_size) * m) / denom, m, v


def test_mixed_master_weights_are_an_independent_fp32_adamw_step_of_the_recorded_gradients(mixed):
    E, G, M, V, norms = (np.asarray(mixed.tensor(k)) for k in ("embeddings", "grads", "momentum", "variance",
                                                                  "grad_norms"))
    assert np.isnan(norms[0]) and np.all(norms[1:] > 0)
    matches = []
    for fused in (True, False):
        ok = True
        for s in range(1, 9):
            w, m, v = _adamw_step(E[s - 1], M[s - 1], V[s - 1], G[s], norms[s], s, fused)
            ok &= all(np.array_equal(bits(a), bits(b)) for a, b in ((m, M[s]), (v, V[s]), (w, E[s])))
        matches.append(ok)
    assert any(matches), "neither rounding of AdamW reproduces the recorded master weights bit for bit"


def test_compiled_mixed_run_matches_itself_and_keeps_the_hole(corpus, tmp_path):
    a = train(small(corpus, precision="bf16-mixed", compile=True, steps=5), tmp_path / "a.safetensors",
              progress=False)
    b = train(small(corpus, precision="bf16-mixed", compile=True, steps=5), tmp_path / "b.safetensors",
              progress=False)
    assert a.compiled and a.path.read_bytes() == b.path.read_bytes()
    rec = Recording(a.path)
    for key in ("embeddings", "embeddings_bf16", "grads", "logits"):
        rows = bits(rec.tensor(key))[:, a.never_seen]
        assert np.all(rows == rows[:, :1]), key  # sigma = 0: the never-seen bytes stay one point


def test_dtype_is_an_alias_of_precision():
    config = TrainConfig(dtype="fp32")
    config.validate()
    assert config.precision == config.dtype == "fp32"
    config = TrainConfig(precision="bf16-mixed")
    config.validate()
    assert config.dtype == "bf16-mixed"
    config.validate()  # validating twice changes nothing
    with pytest.raises(BlackholesError, match="--dtype bf16 and --precision fp32 disagree"):
        TrainConfig(dtype="bf16", precision="fp32").validate()
    assert TrainConfig(dtype="bf16", precision="bf16").recipe()["precision"] == "bf16"


def test_unknown_precision_is_one_line(tmp_path):
    p = run_blackholes("train", "--out", tmp_path / "r.safetensors", "--precision", "fp8", *SMALL_CLI)
    assert_one_line_error(p.returncode, p.stderr, "--precision must be one of bf16, fp32, bf16-mixed, got 'fp8'")
    p = run_blackholes("train", "--out", tmp_path / "r.safetensors", "--dtype", "int8", *SMALL_CLI)
    assert_one_line_error(p.returncode, p.stderr, "got 'int8'")
    assert not (tmp_path / "r.safetensors").exists()
