"""THE REFERENCE CHECK: a plain batch-1 ``generate()`` loop, written here from the method's description (Land &
Bartolo 2024), gives the same verdict and the same probabilities (within 1e-4 relative, float32) as ``verify``."""

from __future__ import annotations

import math

import pytest

from blackholes.verify import verify
from blackholes.verify.prompts import PROMPTS


def reference(model, tokenizer, token_id: int, placeholder_id: int, placeholder: str) -> dict:
    """For each prompt: encode its text around the placeholder, put the token's id where the placeholder's was,
    generate 3 tokens greedily at batch 1, and take the token's highest softmax probability over those steps."""
    import torch

    out = {}
    for template in PROMPTS:
        ids = tokenizer(template.text(placeholder), return_tensors="pt").input_ids
        assert int((ids == placeholder_id).sum()) == template.slots
        ids[ids == placeholder_id] = token_id
        with torch.inference_mode():
            gen = model.generate(ids, max_new_tokens=3, do_sample=False, output_logits=True,
                                 return_dict_in_generate=True, pad_token_id=model.config.eos_token_id)
        out[template.name] = max(float(torch.softmax(step[0].float(), -1)[token_id]) for step in gen.logits)
    return out


def magikarp_verdict(p: float) -> str:
    return ("strong_rejected" if p > 0.9 else "weak_rejected" if p > 0.1 else
            "strong_verified" if p < 0.001 else "weak_verified")


def close(a: float, b: float) -> bool:
    return a == b or abs(a - b) <= 1e-4 * max(abs(a), abs(b))


@pytest.mark.parametrize("batch_size", [7])
def test_verify_agrees_with_the_batch_1_generate_loop(lm, batch_size):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokens = lm["dead"][:6] + lm["copy"][:5] + [40, 77, 101, 150, 222, 299, 350, 398]
    v = verify(str(lm["folder"]), tokens, device="cpu", batch_size=batch_size, progress=False,
               skip_rejected=False)
    model = AutoModelForCausalLM.from_pretrained(lm["folder"], dtype="float32").eval()
    tokenizer = AutoTokenizer.from_pretrained(lm["folder"])
    verdicts = set()
    for t in v.tokens:
        ref = reference(model, tokenizer, t.id, v.placeholder["id"], v.placeholder["text"])
        for name, p in ref.items():
            assert close(t.probs[name], p), (t.id, name, t.probs[name], p)
        best = max(ref.values())
        assert close(t.max_prob, best) and t.verdict == magikarp_verdict(best), (t, ref)
        verdicts.add(t.verdict)
    assert {"strong_verified", "strong_rejected", "weak_verified"} <= verdicts  # the planted behaviour shows
    assert all(t.verdict == "strong_verified" for t in v.tokens if t.id in lm["dead"])
    assert all(t.verdict == "strong_rejected" for t in v.tokens if t.id in lm["copy"])
    assert all(0 < t.max_prob < 1e-3 for t in v.tokens if t.id in lm["dead"])  # tiny, yet not underflowed


def test_dropping_strong_rejected_tokens_changes_no_verdict(lm):
    tokens = lm["dead"][:3] + lm["copy"][:4] + [77, 101]
    full = verify(str(lm["folder"]), tokens, device="cpu", batch_size=4, progress=False, skip_rejected=False)
    fast = verify(str(lm["folder"]), tokens, device="cpu", batch_size=4, progress=False)
    for a, b in zip(full.tokens, fast.tokens):
        assert a.id == b.id and a.verdict == b.verdict and close(a.max_prob, b.max_prob)
        for name, p in b.probs.items():
            assert p is None or close(p, a.probs[name])
    skipped = [b for b in fast.tokens if None in b.probs.values()]
    assert skipped and all(b.verdict == "strong_rejected" for b in skipped)


def test_batch_size_does_not_change_the_answers(lm):
    tokens = lm["dead"][:2] + lm["copy"][:2] + [77, 101, 150]
    one = verify(str(lm["folder"]), tokens, device="cpu", batch_size=1, progress=False)
    many = verify(str(lm["folder"]), tokens, device="cpu", batch_size=16, progress=False)
    for a, b in zip(one.tokens, many.tokens):
        assert a.verdict == b.verdict
        assert all(close(a.probs[k], b.probs[k]) for k in a.probs if a.probs[k] is not None)
    assert not math.isnan(one.tokens[0].max_prob)


def test_a_model_that_ends_at_once_is_scored_like_generate(lm, tmp_path):
    """When the greedy token is end-of-sequence, generate() stops: later steps are not scored, here neither."""
    import shutil

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(lm["folder"], dtype="float32").eval()
    eos = model.config.eos_token_id
    with torch.no_grad():
        model.lm_head.weight[eos, 0] = 4.0  # dimension 0 is on everywhere: end-of-sequence wins unless copying
    folder = tmp_path / "eos"
    model.save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(lm["folder"] / name, folder / name)
    tokens = [lm["copy"][0], 77, 150, lm["dead"][0]]
    v = verify(str(folder), tokens, device="cpu", batch_size=4, progress=False, skip_rejected=False)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    ends = 0
    for t in v.tokens:
        ref = reference(model, tokenizer, t.id, v.placeholder["id"], v.placeholder["text"])
        assert all(close(t.probs[k], p) for k, p in ref.items()), (t, ref)
        assert t.verdict == magikarp_verdict(max(ref.values()))
        ids = tokenizer(PROMPTS[0].text(v.placeholder["text"]), return_tensors="pt").input_ids
        ids[ids == v.placeholder["id"]] = t.id
        ends += model.generate(ids, max_new_tokens=3, do_sample=False, pad_token_id=eos).shape[1] < ids.shape[1] + 3
    assert ends  # generate() stopped before its 3 steps for some tokens: the case is exercised


def test_another_architecture_agrees_too(tmp_path):
    """GPT-2 (learned positions, tied output matrix, its own cache path) against the same batch-1 loop."""
    import torch
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    import tiny_lm

    tok = tiny_lm.train_tokenizer()
    torch.manual_seed(1)
    config = GPT2Config(vocab_size=tok.get_vocab_size(), n_embd=32, n_layer=2, n_head=4, n_positions=1024,
                        eos_token_id=0, bos_token_id=0)
    model = GPT2LMHeadModel(config).eval()
    model.save_pretrained(tmp_path / "gpt2")
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=tiny_lm.EOS).save_pretrained(tmp_path / "gpt2")
    v = verify(str(tmp_path / "gpt2"), [3, 50, 77, 300], device="cpu", batch_size=3, progress=False,
               skip_rejected=False)
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "gpt2")
    for t in v.tokens:
        ref = reference(model, tokenizer, t.id, v.placeholder["id"], v.placeholder["text"])
        assert all(close(t.probs[k], p) for k, p in ref.items()), (t, ref)
        assert t.verdict == magikarp_verdict(max(ref.values()))
