"""The loop's parts stand alone (a batched version mirrors them) and leave no state behind."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from blackholes.errors import BlackholesError
from blackholes.training import loop
from blackholes.training.loop import (
    Trainer,
    build_model,
    build_optimizer,
    learning_rate,
    train,
    train_step,
    window_starts,
)
from blackholes.io.recording import Recording
from train_helpers import bits, small, write_corpus


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("step") / "c.txt")


def test_train_step_by_hand_reproduces_the_recording_bit_for_bit(corpus, tmp_path):
    config = small(corpus, steps=5, sigma=0.01, batch=2, seed=3)
    rec = Recording(train(config, tmp_path / "r.safetensors", progress=False).path)

    config.validate()
    model, _ = build_model(config)
    trainer = Trainer(model, build_optimizer(model, config), loop.forward_loss, config.clip)
    tokens = torch.from_numpy(np.frombuffer(corpus.read_bytes(), np.uint8).astype(np.int64))
    starts = window_starts(config, len(tokens))
    seen = []
    for step in range(1, 6):
        windows = torch.stack([tokens[s : s + 17] for s in starts[step - 1]])
        with loop.intra_op_threads(config.threads):  # as train() runs it: the thread count changes roundings
            out = train_step(trainer, windows[:, :-1], windows[:, 1:], learning_rate(config, step),
                             observe=lambda loss, logits: seen.append(model.embedding.grad.clone()))
        assert out.grad_norm is not None and out.last_logits.shape == (32,)
        as_bits = lambda t: t.detach().view(torch.int16).numpy().view(np.uint16)  # noqa: E731
        assert np.array_equal(as_bits(model.embedding), bits(rec.tensor("embeddings")[step]))
        assert np.array_equal(as_bits(seen[-1]), bits(rec.tensor("grads")[step]))  # observed before clipping
        assert np.array_equal(as_bits(out.grad_norm), bits(rec.tensor("grad_norms")[step]))


def test_thread_count_is_restored_after_a_run_and_after_a_failure(corpus, tmp_path):
    if (os.cpu_count() or 1) < 2:
        pytest.skip("needs two CPUs")
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        result = train(small(corpus, steps=2, threads=1), tmp_path / "a.safetensors", progress=False)
        assert Recording(result.path).metadata["threads"] == 1
        assert torch.get_num_threads() == 2

        def fail(step):
            raise RuntimeError("boom")

        with pytest.raises(RuntimeError, match="boom"):
            train(small(corpus, steps=2, threads=1), tmp_path / "b.safetensors", progress=False, on_step=fail)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_compiled_forwards_are_kept_per_thread_count_and_only_when_they_work(corpus, tmp_path, monkeypatch):
    monkeypatch.setattr(loop, "_COMPILED", {})
    real_compile = torch.compile

    def broken(fn, **kw):
        def call(*a):
            raise RuntimeError("no compiler")
        return call

    monkeypatch.setattr(torch, "compile", broken)
    with pytest.raises(BlackholesError, match="no compiler"):
        train(small(corpus, compile=True, steps=2), tmp_path / "a.safetensors", progress=False)
    assert loop._COMPILED == {}  # a failure is not remembered: the next run tries again
    monkeypatch.setattr(torch, "compile", real_compile)
    assert train(small(corpus, compile=True, steps=2), tmp_path / "b.safetensors", progress=False).compiled
    assert list(loop._COMPILED) == [("forward_loss", 1)]
    if (os.cpu_count() or 1) >= 2:  # inductor bakes the thread count into its kernels: a graph of its own
        r = train(small(corpus, compile=True, steps=2, threads=2), tmp_path / "c.safetensors", progress=False)
        assert r.compiled and set(loop._COMPILED) == {("forward_loss", 1), ("forward_loss", 2)}
        assert loop._COMPILED["forward_loss", 1] is not loop._COMPILED["forward_loss", 2]
        assert loop._COMPILED["forward_loss", 1].__wrapped__.__code__ is not \
            loop._COMPILED["forward_loss", 2].__wrapped__.__code__
