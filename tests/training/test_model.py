"""The byte-level GPT: shapes, tying, causality, and initialisation around one point."""

from __future__ import annotations

import pytest
import torch

from blackholes.training.model import GPT, GPTConfig

SMALL = GPTConfig(vocab=32, context=16, width=16, layers=2, heads=2)


def make(sigma: float, seed: int = 0, config: GPTConfig = SMALL) -> tuple[GPT, torch.Tensor]:
    model = GPT(config)
    centre = model.init_weights(sigma, torch.Generator().manual_seed(seed))
    return model, centre


def test_default_config_is_the_lil_gatsby_recipe():
    c = GPTConfig()
    assert (c.vocab, c.context, c.width, c.layers, c.heads, c.mlp_ratio) == (128, 128, 64, 2, 2, 4)
    model = GPT(c)
    assert model.embedding.shape == (128, 64)
    assert model.blocks[0].mlp.fc.out_features == 256


def test_sigma_zero_puts_every_row_on_the_centre_bit_for_bit():
    model, centre = make(0.0)
    for dtype in (torch.float32, torch.bfloat16):
        W = model.embedding.detach().to(dtype)
        bits = W.view(torch.int16) if dtype == torch.bfloat16 else W.view(torch.int32)
        assert torch.equal(bits, bits[:1].expand_as(bits))
    assert torch.equal(model.embedding.detach()[0], centre)
    assert 0.005 < centre.std().item() < 0.05  # c ~ N(0, 0.02^2)


def test_sigma_positive_spreads_rows_around_the_same_centre():
    model0, c0 = make(0.0, seed=3)
    model1, c1 = make(0.5, seed=3)
    assert torch.equal(c0, c1)  # the centre does not depend on sigma
    W = model1.embedding.detach()
    assert torch.unique(W, dim=0).shape[0] == W.shape[0]
    spread = (W - c1).std().item()
    assert 0.3 < spread < 0.7


def test_init_is_reproducible_and_gpt2_like():
    a, _ = make(0.1, seed=7)
    b, _ = make(0.1, seed=7)
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(p, q), name
    block = a.blocks[0]
    assert torch.count_nonzero(block.attn.qkv.bias) == 0
    assert torch.equal(block.ln1.weight, torch.ones_like(block.ln1.weight))
    # residual projections are scaled down by sqrt(2 * layers)
    assert block.mlp.proj.weight.std() < 0.75 * block.mlp.fc.weight.std()


def test_logits_use_the_tied_matrix():
    model, _ = make(0.3)
    idx = torch.randint(0, SMALL.vocab, (2, 10), generator=torch.Generator().manual_seed(1))
    logits = model(idx)
    assert logits.shape == (2, 10, SMALL.vocab)
    with torch.no_grad():
        model.embedding[5] += 1.0  # one matrix: changes the input of byte 5 and the score of byte 5
    assert not torch.equal(model(idx)[..., 5], logits[..., 5])
    assert not any(p is model.embedding for p in model.blocks.parameters())


def test_attention_is_causal():
    model, _ = make(0.3)
    g = torch.Generator().manual_seed(2)
    a = torch.randint(0, SMALL.vocab, (1, 12), generator=g)
    b = a.clone()
    b[0, 8:] = (b[0, 8:] + 1) % SMALL.vocab  # change only the future
    assert torch.allclose(model(a)[0, :8], model(b)[0, :8], atol=0, rtol=0)
    assert not torch.allclose(model(a)[0, 8:], model(b)[0, 8:])


def test_too_long_sequence_and_bad_config_are_errors():
    model, _ = make(0.0)
    with pytest.raises(ValueError, match="longer than the context"):
        model(torch.zeros(1, 17, dtype=torch.long))
    with pytest.raises(ValueError, match="divisible"):
        GPTConfig(width=10, heads=3)
    with pytest.raises(ValueError, match="positive"):
        GPTConfig(layers=0)
