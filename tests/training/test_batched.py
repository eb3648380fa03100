"""Runs trained as one stacked model are the runs train() makes, bit for bit, at every step."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from blackholes.errors import BlackholesError
from blackholes.training import batched, loop
from blackholes.training.config import TrainConfig
from blackholes.training.batched import (
    StackedBatches,
    agrees_with_single,
    build_stacked_trainer,
    check_stackable,
    stacked_train_step,
)
from blackholes.training.model import GPT, GPTConfig
from blackholes.io.recording import Recording
from train_helpers import bits, small, write_corpus


@pytest.fixture(scope="module")
def corpora(tmp_path_factory):
    folder = tmp_path_factory.mktemp("batched")
    return write_corpus(folder / "a.txt"), write_corpus(folder / "b.txt", n=2000, seed=7)


def as_bits(t: torch.Tensor) -> np.ndarray:
    t = t.detach()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(np.uint16).copy()
    return t.view(torch.int32).numpy().view(np.uint32).copy()


def prepared(configs):
    for c in configs:
        c.validate()
    tokens = [loop.prepare_corpus(c).tokens for c in configs]
    return tokens, [loop.window_starts(c, len(t)) for c, t in zip(configs, tokens)]


def stacked_embeddings(configs) -> np.ndarray:
    """Train ``configs`` stacked; every step's embedding bits, ``[K, steps + 1, V, D]``."""
    tokens, starts = prepared(configs)
    with loop.intra_op_threads(configs[0].threads):
        trainer = build_stacked_trainer(configs)
        data = StackedBatches(tokens, starts, configs[0].context)
        out = [as_bits(trainer.model.embedding)]
        for step in range(1, configs[0].steps + 1):
            inputs, targets = data.get(step)
            stacked_train_step(trainer, inputs, targets, step)
            out.append(as_bits(trainer.model.embedding))
    return np.stack(out, axis=1)


def varied(corpora, K, precision, steps=5, **kw):
    """K runs that differ in everything a run may: corpus, seed, sigma, init, lr, clipping, Adam."""
    return [small(corpora[k % 2], steps=steps, precision=precision, seed=k, sigma=(0.0, 1e-3, 0.02)[k % 3],
                  init=("centre", "unit", "centre")[k % 3], lr=(1e-3, 3e-3, 1e-2)[k % 3], clip=(1.0, 0.0, 0.3)[k % 3],
                  beta2=(0.999, 0.99)[k % 2], weight_decay=(0.0, 0.1)[(k // 2) % 2], **kw) for k in range(K)]


@pytest.mark.parametrize("precision", ["bf16", "fp32", "bf16-mixed"])
@pytest.mark.parametrize("K", [1, 3, 8])
def test_stacked_runs_are_train_runs_bit_for_bit_at_every_step(corpora, tmp_path, precision, K):
    configs = varied(corpora, K, precision, batch=2 if K == 3 else 1)
    got = stacked_embeddings(configs)
    for k, config in enumerate(configs):
        rec = Recording(loop.train(config, tmp_path / f"run{k}.safetensors", progress=False).path)
        want = bits(rec.tensor("embeddings"))
        assert want.shape == got[k].shape
        differ = np.flatnonzero((want != got[k]).reshape(len(want), -1).any(axis=1))
        assert differ.size == 0, f"run {k} ({precision}) first differs at step {differ[0]}"


@pytest.mark.parametrize("precision", ["bf16", "fp32", "bf16-mixed"])
def test_logits_losses_and_every_gradient_are_each_runs_own(precision):
    cfg = GPTConfig(vocab=32, context=16, width=16, layers=2, heads=2)
    mode = {"bf16": torch.bfloat16, "fp32": torch.float32, "bf16-mixed": torch.float32}[precision]
    models = []
    for k in range(3):
        m = GPT(cfg)
        m.init_weights(0.01 * k, torch.Generator().manual_seed(k))
        models.append(m.to(mode))
    stacked = batched.StackedGPT(models)
    idx = torch.randint(0, 32, (3, 2, 17), generator=torch.Generator().manual_seed(0))
    forward = loop.forward_loss_bf16_autocast if precision == "bf16-mixed" else loop.forward_loss
    sforward = batched.stacked_forward_loss_bf16_autocast if precision == "bf16-mixed" else batched.stacked_forward_loss
    losses, last = sforward(stacked, idx[..., :-1], idx[..., 1:])
    losses.sum().backward()
    for k, m in enumerate(models):
        loss, logits = forward(m, idx[k, :, :-1], idx[k, :, 1:])
        loss.backward()
        assert np.array_equal(as_bits(loss), as_bits(losses[k])) and np.array_equal(as_bits(logits), as_bits(last[k]))
        for i, (name, p) in enumerate(m.named_parameters()):
            assert stacked.names[i] == name
            assert np.array_equal(as_bits(p.grad), as_bits(stacked.stacked[i].grad[k])), name


def test_the_check_catches_a_kernel_that_rounds_differently(corpora, monkeypatch):
    configs = varied(corpora, 3, "bf16", steps=2)
    tokens, starts = prepared(configs)
    assert agrees_with_single(configs, tokens, starts)

    def twice_rounded(x, weight, bias):  # the bias added after the matmul: a second rounding in bf16
        y = torch.bmm(x.reshape(x.shape[0], -1, x.shape[-1]), weight.transpose(1, 2))
        y = y if bias is None else y + bias[:, None, :]
        return y.view(*x.shape[:-1], weight.shape[1])

    monkeypatch.setattr(batched, "_linear", twice_rounded)
    assert not agrees_with_single(configs, tokens, starts)


def test_runs_read_their_own_windows(corpora):
    configs = varied(corpora, 2, "bf16", steps=300, batch=2)  # past one block of windows
    tokens, starts = prepared(configs)
    stacked = StackedBatches(tokens, starts, configs[0].context)
    singles = [loop.Batches(loop.prepare_corpus(c), s, c.context) for c, s in zip(configs, starts)]
    for step in (1, 2, 256, 257, 300):
        inputs, targets = stacked.get(step)
        for k, one in enumerate(singles):
            i, t = one.get(step)
            assert torch.equal(inputs[k], i) and torch.equal(targets[k], t)


def test_runs_of_different_shapes_are_refused(corpora):
    with pytest.raises(BlackholesError, match="different precision"):
        check_stackable([small(corpora[0]), small(corpora[0], precision="fp32")])
    with pytest.raises(BlackholesError, match="no runs"):
        check_stackable([])


def test_runs_with_equal_adam_settings_share_one_fused_call(corpora):
    configs = [small(corpora[0], seed=s, lr=lr) for s, lr in ((0, 1e-3), (1, 1e-3), (2, 5e-3))]
    for c in configs:
        c.validate()
    trainer = build_stacked_trainer(configs)
    assert trainer.group_of_run == [0, 0, 1] and len(trainer.optimizer.param_groups) == 2


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.sampled_from([0.0, 1e-4, 5e-2]), st.integers(0, 2**31), st.sampled_from([1e-3, 2e-2]),
                          st.sampled_from([0.0, 0.5, 1.0])), min_size=1, max_size=4),
       st.sampled_from(["bf16", "fp32", "bf16-mixed"]))
def test_any_runs_stacked_equal_the_same_runs_alone(corpora, tmp_path, runs, precision):
    configs = [small(corpora[0], steps=3, sigma=s, seed=seed, lr=lr, clip=clip, precision=precision)
               for s, seed, lr, clip in runs]
    got = stacked_embeddings(configs)
    for k, config in enumerate(configs):
        rec = Recording(loop.train(config, tmp_path / f"h{k}.safetensors", progress=False).path)
        assert np.array_equal(bits(rec.tensor("embeddings")), got[k])


def test_the_default_recipe_stacked_is_train_bit_for_bit(tmp_path):
    configs = [TrainConfig(steps=3, seed=k, sigma=(0.0, 1e-4, 0.02)[k], compile=False) for k in range(3)]
    got = stacked_embeddings(configs)
    for k, config in enumerate(configs):
        rec = Recording(loop.train(config, tmp_path / f"d{k}.safetensors", progress=False).path)
        assert np.array_equal(bits(rec.tensor("embeddings")), got[k])
