"""Initialisations: centre (c + sigma*eps, today's), unit (unit-vector centre), normal (no shared point)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from blackholes.errors import BlackholesError
from blackholes.training.loop import TrainConfig, build_model, train
from blackholes.training.model import GPT, GPTConfig
from blackholes.io.recording import Recording
from support import assert_one_line_error, run_blackholes
from train_helpers import SMALL_CLI, bits, small, write_corpus

SMALL = GPTConfig(vocab=32, context=16, width=16, layers=1, heads=2)


def init(kind: str, sigma: float, seed: int = 0):
    model = GPT(SMALL)
    centre = model.init_weights(sigma, torch.Generator().manual_seed(seed), init=kind)
    return model, centre


def test_unit_puts_every_row_on_one_unit_vector_at_sigma_zero():
    model, centre = init("unit", 0.0)
    W = model.embedding.detach()
    assert abs(float(centre.norm()) - 1.0) < 1e-6
    assert torch.equal(W, centre.expand_as(W))
    for dtype in (torch.bfloat16, torch.float32):  # one point in every training dtype
        b = W.to(dtype).view(torch.int16 if dtype == torch.bfloat16 else torch.int32)
        assert torch.equal(b, b[:1].expand_as(b))
    _, c0 = init("centre", 0.0)
    assert torch.allclose(centre, c0 / c0.norm())  # the same direction, drawn from the same numbers


def test_unit_noise_is_drawn_in_fp32_then_rounded_once(tmp_path):
    corpus = write_corpus(tmp_path / "c.txt")
    config = small(corpus, init="unit", sigma=0.05, steps=1)
    config.validate()
    model, centre = build_model(config)  # bf16: the fp32 rows c + sigma*eps rounded once
    fp32 = GPT(SMALL)
    fp32.init_weights(0.05, torch.Generator().manual_seed(0), init="unit")
    assert torch.equal(model.embedding.detach(), fp32.embedding.detach().to(torch.bfloat16))
    spread = (fp32.embedding.detach() - centre).std().item()
    assert 0.03 < spread < 0.07


def test_normal_has_no_shared_point():
    model, centre = init("normal", 0.02)
    W = model.embedding.detach()
    assert not centre.any()  # no shared point: the recorded centre is the zero vector
    assert torch.unique(W, dim=0).shape[0] == 32
    assert 0.015 < W.std().item() < 0.025 and abs(W.mean().item()) < 0.005


def test_other_weights_do_not_depend_on_the_init():
    models = [init(kind, 0.1)[0] for kind in ("centre", "unit", "normal")]
    for name, p in models[0].named_parameters():
        if name != "wte.weight":
            assert all(torch.equal(p, dict(m.named_parameters())[name]) for m in models[1:]), name
    centre_model, c = init("centre", 1.0)
    normal_model, _ = init("normal", 1.0)
    # the same eps_i: centre's rows are normal's rows shifted by c
    assert torch.allclose(centre_model.embedding - normal_model.embedding, c.expand(32, -1), atol=1e-6)


@pytest.mark.parametrize("kind", ["centre", "unit", "normal"])
def test_init_is_recorded_and_trains(tmp_path, kind):
    corpus = write_corpus(tmp_path / "c.txt")
    result = train(small(corpus, init=kind, sigma=0.0 if kind != "normal" else 0.02, steps=4),
                   tmp_path / "r.safetensors", progress=False)
    rec = Recording(result.path)
    assert rec.metadata["init"] == rec.metadata["config"]["init"] == kind == result.init
    first = bits(rec.tensor("embeddings")[0])
    if kind == "normal":
        assert len({row.tobytes() for row in first}) == 32 and not any(rec.metadata["centre"])
    else:
        assert np.all(first == first[:1])  # sigma = 0: one point
        rows = bits(rec.tensor("embeddings"))[:, result.never_seen]
        assert np.all(rows == rows[:, :1])  # ...and the never-seen bytes stay on it


def test_bad_init_settings_are_one_line(tmp_path):
    with pytest.raises(BlackholesError, match="--init must be one of centre, unit, normal"):
        TrainConfig(init="uniform").validate()
    with pytest.raises(BlackholesError, match="--init normal .*--sigma > 0"):
        TrainConfig(init="normal", sigma=0.0).validate()
    with pytest.raises(ValueError, match="init must be one of"):
        GPT(SMALL).init_weights(0.0, torch.Generator(), init="zeros")
    out = tmp_path / "r.safetensors"
    p = run_blackholes("train", "--out", out, "--init", "unit", "--sigma", "-0.5", *SMALL_CLI)
    assert_one_line_error(p.returncode, p.stderr, "--sigma must be a finite number >= 0 (the spread of --init unit)")
    assert not out.exists()
