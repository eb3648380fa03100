"""Benchmark ``blackholes verify`` against a faithful batch-1 ``generate()`` loop, on one model, in one run.

The model: a SmolLM-135M-shaped Llama with random weights (vocabulary 49,152, hidden 576, 30 layers, 9 heads, 3
key/value heads, MLP 1,536, tied: 134.5 M parameters), saved once with ``save_pretrained`` beside a byte-level BPE
tokenizer trained on the package's corpus (its ids below 2,000; the rows above are the vocabulary's padding).
``--small`` uses a 6-layer model instead, when time is short. Each contender runs in its own interpreter,
loads the model, then is timed on the same tokens:

  reference   magikarp's loop: for each token and prompt, encode, substitute, ``generate()`` 3 tokens at batch 1
  verify      ``blackholes.verify.verify`` (batched engine), float32, --batch-size N
  verify bf16 the same in bfloat16 (speed, and how many verdicts and probabilities differ from float32)

Figures: tokens verified per second, the speed-up, and the achieved matmul GFLOP/s (2 per weight per token through
the layers, the output matrix at the scored rows; attention scores left out) against the machine's matmul peak,
measured here as the best of 5 float32 2048 x 2048 x 2048 products (``torch.matmul``, all threads).

Usage:
    python benchmarks/bench_verify.py [--dir /tmp/blackholes-bench-verify] [--tokens 16] [--batch-size 16] [--small]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from _common import run_child  # benchmarks/_common.py

SHAPE = dict(vocab_size=49_152, hidden_size=576, intermediate_size=1_536, num_hidden_layers=30,
             num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=2_048, tie_word_embeddings=True)
CORPUS = Path(__file__).resolve().parents[1] / "src" / "blackholes" / "data" / "default_corpus.txt"

BUILD = """
import json, torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
tok = Tokenizer(models.BPE())
tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
tok.decoder = decoders.ByteLevel()
tok.train([CORPUS], trainers.BpeTrainer(vocab_size=2000, special_tokens=["<|endoftext|>"], show_progress=False,
          initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
torch.manual_seed(0)
cfg = LlamaConfig(**SHAPE, eos_token_id=0, bos_token_id=None, pad_token_id=None)
model = LlamaForCausalLM(cfg)
model.save_pretrained(FOLDER)
PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>").save_pretrained(FOLDER)
out = {"parameters": sum(p.numel() for p in model.parameters()), "tokenizer": tok.get_vocab_size()}
t0 = time.perf_counter()
"""

LOAD = """
import time, torch, warnings
warnings.simplefilter("ignore")
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.utils import logging
logging.set_verbosity_error(); logging.disable_progress_bar()
model = AutoModelForCausalLM.from_pretrained(FOLDER, dtype=getattr(torch, DTYPE)).eval()
tokenizer = AutoTokenizer.from_pretrained(FOLDER)
"""

REFERENCE = LOAD + """
from blackholes.verify.prompts import PROMPTS, choose_placeholder
t0 = time.perf_counter()
pid, ptext, prompts = choose_placeholder(tokenizer, len(tokenizer), tokenizer.all_special_ids)
results = {}
for t in TOKENS:
    probs = {}
    for template in PROMPTS:
        ids = tokenizer(template.text(ptext), return_tensors="pt").input_ids
        ids[ids == pid] = t
        with torch.inference_mode():
            g = model.generate(ids, max_new_tokens=3, do_sample=False, output_logits=True,
                               return_dict_in_generate=True, pad_token_id=0)
        probs[template.name] = max(float(torch.softmax(s[0].float(), -1)[t]) for s in g.logits)
    results[t] = probs
seconds = time.perf_counter() - t0
flops = 0.0
body = sum(p.numel() for p in model.parameters()) - model.get_input_embeddings().weight.numel()
head = model.get_output_embeddings().weight.numel()
for p in prompts:  # the whole prompt runs for every token: no shared prefix
    flops += (2 * body * (len(p.ids) + 2) + 2 * head * 3) * len(TOKENS)
out = {"results": {str(k): v for k, v in results.items()}, "flops": flops}
"""

VERIFY = LOAD + """
from blackholes.verify.run import verify
import blackholes.verify.engine as E
flops = [0.0]
score = E.Engine.score
def counted(self, k, ids):
    flops[0] += self.flops(k, len(ids))
    return score(self, k, ids)
E.Engine.score = counted
t0 = time.perf_counter()
v = verify(FOLDER, TOKENS, device="cpu", dtype=DTYPE, batch_size=BATCH, progress=False, loaded=(model, tokenizer))
out = {"results": {str(t.id): t.probs for t in v.tokens}, "verdicts": {str(t.id): t.verdict for t in v.tokens},
       "flops": flops[0]}
"""

PEAK = """
import time, torch
a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
a @ b
best = min(_timed(a, b) for _ in range(5))
out = {"gflops": 2 * 2048 ** 3 / best / 1e9, "threads": torch.get_num_threads()}
t0 = time.perf_counter()
"""
TIMED = """
def _timed(a, b):
    t = time.perf_counter(); a @ b; return time.perf_counter() - t
"""


def verdict(p: float) -> str:
    return ("strong_rejected" if p > 0.9 else "weak_rejected" if p > 0.1 else
            "strong_verified" if p < 0.001 else "weak_verified")


def compare(a: dict, b: dict) -> tuple[int, float]:
    """(verdicts that differ, largest relative probability difference) between two contenders' results."""
    differ, worst = 0, 0.0
    for t, pa in a.items():
        pb = b[t]
        differ += verdict(max(pa.values())) != verdict(max(v for v in pb.values() if v is not None))
        for name, x in pa.items():
            y = pb[name]
            if y is not None and max(abs(x), abs(y)) > 0:
                worst = max(worst, abs(x - y) / max(abs(x), abs(y)))
    return differ, worst


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", default="/tmp/blackholes-bench-verify")
    ap.add_argument("--tokens", type=int, default=16, help="tokens to verify (the same ones on each side)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--small", action="store_true", help="6 layers instead of 30 (same widths)")
    ap.add_argument("--no-bf16", action="store_true", help="skip the bfloat16 run")
    args = ap.parse_args()
    shape = dict(SHAPE, num_hidden_layers=6) if args.small else SHAPE
    folder = Path(args.dir) / ("small" if args.small else "smollm-135m-shaped")
    consts = f"FOLDER = {str(folder)!r}\nCORPUS = {str(CORPUS)!r}\nSHAPE = {shape!r}\nimport time\n"
    if not (folder / "config.json").is_file():
        built, _ = run_child(consts + BUILD)
        print(f"built {folder}: {built['parameters'] / 1e6:.1f} M parameters, tokenizer {built['tokenizer']:,}")
    tokens = list(range(300, 300 + 97 * args.tokens, 97))[: args.tokens]  # spread over the tokenizer's ids
    run = consts + f"TOKENS = {tokens!r}\nBATCH = {args.batch_size}\n"
    peak, _ = run_child(TIMED + PEAK)
    ref, ref_rss = run_child(run + "DTYPE = 'float32'\n" + REFERENCE)
    fast, fast_rss = run_child(run + "DTYPE = 'float32'\n" + VERIFY)
    rows = [("reference (batch-1 generate)", ref, ref_rss), (f"verify, batch {args.batch_size}", fast, fast_rss)]
    if not args.no_bf16:
        bf16, bf16_rss = run_child(run + "DTYPE = 'bfloat16'\n" + VERIFY)
        rows.append((f"verify bf16, batch {args.batch_size}", bf16, bf16_rss))
    print(f"matmul peak: {peak['gflops']:.1f} GFLOP/s (float32 2048^3, {peak['threads']} threads)")
    print(f"{'contender':<30} {'s':>8} {'tokens/s':>9} {'GFLOP/s':>8} {'of peak':>8} {'peak RSS':>9}")
    for name, r, rss in rows:
        g = r["flops"] / r["seconds"] / 1e9
        print(f"{name:<30} {r['seconds']:8.1f} {len(tokens) / r['seconds']:9.3f} {g:8.1f} "
              f"{g / peak['gflops']:8.0%} {rss / 2**20:7.0f} MB")
    print(f"speed-up of verify over the reference: {ref['seconds'] / fast['seconds']:.2f}x")
    differ, worst = compare(ref["results"], fast["results"])
    print(f"verify vs reference: {differ} verdicts differ; largest relative probability difference {worst:.1e}")
    if not args.no_bf16:
        differ, worst = compare(fast["results"], rows[2][1]["results"])
        print(f"bf16 vs float32: {differ} of {len(tokens)} verdicts differ; largest relative probability "
              f"difference {worst:.1e}")
    json.dump({name: {k: v for k, v in r.items() if k != "results"} for name, r, _ in rows}, sys.stdout)
    print()


if __name__ == "__main__":
    main()
