"""The batched verification engine: magikarp's answers, many candidates per forward pass.

For one prompt and a batch of candidates, what magikarp computes one candidate at a time with ``generate()``
(Land & Bartolo 2024: greedy continuation for 3 tokens; the candidate's softmax probability at each of the 3
next-token positions) is computed here for the whole batch at once:

* the prompt's ids up to the first placeholder are the same for every candidate: they run once, and their
  key/value cache is expanded over the batch;
* the rest of the prompt runs for the batch in one forward pass, the candidate's id in every placeholder slot;
* logits are computed at the last position only (``logits_to_keep=1``), the only one that is scored;
* the 2 further greedy steps run batched on the cache, one token per row;
* a row whose greedy token is an end-of-sequence id is not scored after it (``generate()`` stops there).

Probabilities are ``softmax`` of the raw logits in float32, as ``generate(output_logits=True)`` returns them, and
the greedy token is their argmax (``generate()`` without logits processors). torch is imported inside functions.
"""

from __future__ import annotations

import copy
import math

STEPS = 3  # greedy continuation length, magikarp's n_tokens
THRESHOLDS = {"strong_rejected": 0.9, "weak_rejected": 0.1, "strong_verified": 0.001, "verified": 0.01}


def verdict(max_prob: float, thresholds: dict = THRESHOLDS) -> str:
    """Magikarp's verdict for the highest probability the candidate got.

    >>> [verdict(p) for p in (0.95, 0.5, 0.05, 0.0001)]
    ['strong_rejected', 'weak_rejected', 'weak_verified', 'strong_verified']
    """
    if max_prob > thresholds["strong_rejected"]:
        return "strong_rejected"
    if max_prob > thresholds["weak_rejected"]:
        return "weak_rejected"
    if max_prob < thresholds["strong_verified"]:
        return "strong_verified"
    return "weak_verified"


def eos_ids(model) -> set[int]:
    """The ids at which ``generate()`` stops: the generation config's end-of-sequence id(s)."""
    config = getattr(model, "generation_config", None)
    eos = getattr(config, "eos_token_id", None) if config is not None else None
    if eos is None:
        eos = getattr(model.config, "eos_token_id", None)
    if eos is None:
        return set()
    return {int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos])}


class Engine:
    """Scores batches of candidates on the prompts; the shared prefix of each prompt is computed once.

    ``score(k, ids)`` -> a float32 ``[len(ids), STEPS]`` array of the candidate's probability at each greedy step
    of prompt ``k`` (NaN at steps after an end-of-sequence token).
    """

    def __init__(self, model, prompts, *, device: str = "cpu"):
        import torch

        self.model, self.prompts, self.device = model, prompts, torch.device(device)
        import inspect

        params = inspect.signature(model.forward).parameters
        self.cache_arg = "cache" if "cache" in params else "past_key_values"  # transformers 5.x renamed it
        self.keep = {"logits_to_keep": 1} if "logits_to_keep" in params else {}  # else all logits, last one read
        self.order = sorted(range(len(prompts)), key=lambda k: len(prompts[k].ids))  # cheapest first
        self.eos = torch.tensor(sorted(eos_ids(model)), dtype=torch.long, device=self.device)
        self.prefixes = [self._prefix(p) for p in prompts]
        head = model.get_output_embeddings().weight
        embedding = model.get_input_embeddings().weight
        body = sum(p.numel() for p in model.parameters() if p is not head and p is not embedding)
        # FLOPs per token through the layers, and per scored row of logits
        self.body_flops, self.head_flops = 2 * body, 2 * head.numel()

    def _prefix(self, prompt):
        """The key/value cache of the ids before the first placeholder (None when the prompt starts with it)."""
        import torch

        start = prompt.slots[0]
        if start == 0:
            return None
        with torch.inference_mode():
            ids = torch.tensor([prompt.ids[:start]], dtype=torch.long, device=self.device)
            return self._cache(self._forward(ids, None))

    def _forward(self, ids, cache):
        return self.model(input_ids=ids, use_cache=True, **self.keep, **{self.cache_arg: cache})

    def _cache(self, out):
        cache = out.get("cache")
        return out.get("past_key_values") if cache is None else cache

    def score(self, k: int, token_ids):
        import numpy as np
        import torch

        prompt, prefix = self.prompts[k], self.prefixes[k]
        start = prompt.slots[0]
        tokens = torch.tensor([int(t) for t in token_ids], dtype=torch.long, device=self.device)
        batch = len(tokens)
        rest = torch.tensor(prompt.ids[start:], dtype=torch.long, device=self.device).repeat(batch, 1)
        rest[:, [s - start for s in prompt.slots]] = tokens[:, None]
        probs = torch.full((batch, STEPS), math.nan, dtype=torch.float32)
        with torch.inference_mode():
            cache = None
            if prefix is not None:
                cache = copy.deepcopy(prefix)
                cache.batch_repeat_interleave(batch)
            out = self._forward(rest, cache)
            alive = torch.ones(batch, dtype=torch.bool, device=self.device)
            for step in range(STEPS):
                logits = out.logits[:, -1, :].float()
                p = torch.log_softmax(logits, dim=-1).gather(1, tokens[:, None])[:, 0].exp()
                probs[:, step] = torch.where(alive, p, torch.nan).cpu()
                if step == STEPS - 1:
                    break
                chosen = logits.argmax(dim=-1)
                if len(self.eos):
                    alive &= ~torch.isin(chosen, self.eos)
                if not bool(alive.any()):
                    break
                out = self._forward(chosen[:, None], self._cache(out))
        return probs.numpy().astype(np.float32)

    def flops(self, k: int, n: int) -> float:
        """Matmul FLOPs of scoring ``n`` candidates on prompt ``k`` (2 per weight per token through the layers,
        the output matrix at the scored positions only; attention scores left out)."""
        tokens = len(self.prompts[k].ids) - self.prompts[k].slots[0] + STEPS - 1
        return float(self.body_flops * tokens + self.head_flops * STEPS) * n
