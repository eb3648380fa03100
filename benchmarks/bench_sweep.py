"""Benchmark `blackholes sweep`: batched runs, the single run against Hugging Face, cold and warm compiles.

Side by side, in one run, on the default recipe (bf16, the packaged corpus unless --corpus):

  batched K       K runs (seeds 0..K-1, sigma 0) stacked in one model, exactly as a sweep trains a batch:
                  each step is the stacked step plus the per-step census of every run. ms per step and
                  per run-step, for K = 1, 4, 16, 64 (--ks); target: K = 16 in <= 3x the wall time of one run.
  single          one run by the sweep's single-run path (loop.Trainer + train_step + the census), eager and
                  torch.compile'd, on 1 thread and on all cores.
  HF loop         transformers.GPT2LMHeadModel (n_embd 64, 2 layers, 2 heads, context 128, vocab 128, tied) in
                  bf16, a plain loop with AdamW, clipping and the linear schedule; 1 thread and all cores.
                  Only when `transformers` imports (the `bench` extra). Target: single <= 0.5x HF per step.
  compile         torch.compile of the single-run step in a fresh process with an empty inductor cache
                  (cold) and again with that cache filled (warm); with the eager/compiled difference per step,
                  the number of steps a run needs to earn its compilation back.

Compilation and imports are outside every timed loop; each loop times --steps steps after --warmup.

Usage:
    python benchmarks/bench_sweep.py [--steps 200] [--warmup 20] [--ks 1,4,16,64] [--no-compile-times]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def configs(k: int, corpus: str | None, steps: int, threads: int, compile: bool = False):
    from blackholes.training.config import TrainConfig

    out = [TrainConfig(corpus=corpus, sigma=0.0, seed=s, steps=steps, compile=compile, threads=threads)
           for s in range(k)]
    for c in out:
        c.validate()
    return out


def prepared(config):
    from blackholes.training import corpus as corpora
    from blackholes.training.loop import prepare_corpus, window_starts

    corpus = prepare_corpus(config)
    return corpus, window_starts(config, corpus.size), corpora.never_seen(corpus.data, config.vocab)


def timed_loop(unit, cs, steps: int, warmup: int) -> dict:
    """The sweep's per-step work for a unit: the step and the census of every run."""
    from blackholes.pipelines.sweep_batch import StepCensus

    census = StepCensus(unit.embeddings(), [prepared(c)[2] for c in cs], steps + warmup)
    for step in range(1, warmup + steps + 1):
        if step == warmup + 1:
            t0, c0 = time.perf_counter(), time.process_time()
        out = unit.step(step, None)
        census.add(out.losses, out.last_logits, unit.embeddings())
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"ms": wall / steps * 1e3, "cpu_ms": cpu / steps * 1e3}


def bench_batched(k: int, corpus, steps: int, warmup: int) -> dict:
    from blackholes.pipelines.sweep_batch import Stacked
    from blackholes.training.loop import intra_op_threads

    cs = configs(k, corpus, steps + warmup, 1)
    with intra_op_threads(1):
        prep = [prepared(c) for c in cs]
        unit = Stacked(list(range(k)), cs, [p[0].tokens for p in prep], [p[1] for p in prep])
        r = timed_loop(unit, cs, steps, warmup)
    return {**r, "per_run_ms": r["ms"] / k}


def bench_single(corpus, steps: int, warmup: int, threads: int, compile: bool) -> dict:
    from blackholes.pipelines.sweep_batch import Single
    from blackholes.training.loop import intra_op_threads

    cs = configs(1, corpus, steps + warmup, threads, compile)
    with intra_op_threads(threads):
        unit = Single(0, cs[0], prepared(cs[0]))  # compiles here, outside the timed loop
        r = timed_loop(unit, cs, steps, warmup)
    return {**r, "compiled": unit.compiled}


def bench_hf(corpus, steps: int, warmup: int, threads: int) -> dict | None:
    try:
        from transformers import GPT2Config, GPT2LMHeadModel
    except ImportError:
        return None
    import numpy as np
    import torch

    from blackholes.training.loop import default_corpus_path, intra_op_threads

    with intra_op_threads(threads):
        torch.manual_seed(0)
        cfg = GPT2Config(vocab_size=128, n_positions=128, n_embd=64, n_layer=2, n_head=2, n_inner=256,
                         activation_function="gelu_new", resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                         tie_word_embeddings=True)
        model = GPT2LMHeadModel(cfg).to(torch.bfloat16)
        with torch.no_grad():  # every row at one point, as the experiment does
            model.transformer.wte.weight.copy_(model.transformer.wte.weight[0].clone())
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
        data = torch.from_numpy(np.frombuffer(Path(corpus or default_corpus_path()).read_bytes(),
                                              np.uint8).astype(np.int64))
        rng = np.random.default_rng(0)
        total = steps + warmup
        for step in range(total):
            if step == warmup:
                t0, c0 = time.perf_counter(), time.process_time()
            s = int(rng.integers(0, len(data) - 129))
            x = data[s : s + 129][None]
            out = model(input_ids=x[:, :-1], labels=x[:, :-1])  # HF shifts the labels itself
            out.loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            for g in opt.param_groups:
                g["lr"] = 1e-3 * (1 - step / total)
            opt.step()
            opt.zero_grad()
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"ms": wall / steps * 1e3, "cpu_ms": cpu / steps * 1e3}


COMPILE_PROBE = """
import sys, time
t0 = time.perf_counter()
from blackholes.training.config import TrainConfig
from blackholes.training import loop
config = TrainConfig(steps=10, compile=True)
config.validate()
with loop.intra_op_threads(1):
    model, _ = loop.build_model(config)
    t1 = time.perf_counter()
    forward = loop.select_forward(model, config, 1, False)
    t2 = time.perf_counter()
print(f"{t2 - t1:.3f} {t1 - t0:.3f} {forward is not None}")
"""


def compile_seconds(cache: Path) -> tuple[float, bool]:
    """torch.compile of the single-run step (compile + one forward/backward) in a new process."""
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(cache), "PYTHONPATH": str(ROOT / "src")}
    done = subprocess.run([sys.executable, "-c", COMPILE_PROBE], capture_output=True, text=True, env=env, check=True)
    seconds, _, ok = done.stdout.split()
    return float(seconds), ok == "True"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=200, help="steps timed per contender")
    ap.add_argument("--warmup", type=int, default=20, help="steps run before timing")
    ap.add_argument("--ks", default="1,4,16,64", help="batch sizes K")
    ap.add_argument("--corpus", default=None, help="training text (default: the packaged corpus)")
    ap.add_argument("--no-compile-times", action="store_true", help="skip the cold/warm compile measurement")
    args = ap.parse_args()
    import torch

    cores = os.cpu_count() or 1
    print(f"machine: {cores} CPUs, torch {torch.__version__}; load average before: {loadavg()}")
    print(f"{args.steps} steps timed after {args.warmup}; default recipe, bf16, batch 1, sigma 0\n")

    batched = {int(k): bench_batched(int(k), args.corpus, args.steps, args.warmup) for k in args.ks.split(",")}
    single = {(t, c): bench_single(args.corpus, args.steps, args.warmup, t, c) for t in sorted({1, cores})
              for c in (False, True)}
    hf = {t: bench_hf(args.corpus, args.steps, args.warmup, t) for t in sorted({1, cores})}

    one = single[(1, False)]["ms"]
    print(f"{'batched (1 thread)':28} {'ms/step':>9} {'ms/run-step':>12} {'CPU ms/run-step':>16} {'x one run':>10}")
    for k, r in batched.items():
        print(f"  K = {k:<22} {r['ms']:>9.2f} {r['per_run_ms']:>12.3f} {r['cpu_ms'] / k:>16.3f} {r['ms'] / one:>10.2f}")
    print(f"\n{'single run':28} {'threads':>9} {'ms/step':>12} {'CPU ms/step':>16} {'x HF':>10}")
    for (t, c), r in single.items():
        h = hf.get(t)
        vs = f"{r['ms'] / h['ms']:.2f}" if h else "n/a"
        name = "compiled" if r["compiled"] else "eager"
        print(f"  sweep single path, {name:8} {t:>9} {r['ms']:>12.2f} {r['cpu_ms']:>16.2f} {vs:>10}")
    for t, h in hf.items():
        if h is None:
            print("  HF GPT2LMHeadModel: transformers not installed (pip install transformers): skipped")
            break
        print(f"  HF GPT2LMHeadModel loop    {t:>9} {h['ms']:>12.2f} {h['cpu_ms']:>16.2f} {1:>10.2f}")

    if 16 in batched:
        ratio = batched[16]["ms"] / one
        print(f"\ntarget: 16 runs <= 3x one run's wall time: {'met' if ratio <= 3 else 'MISSED'} ({ratio:.2f}x; "
              f"throughput {16 / ratio:.1f}x)")
    for t in sorted({1, cores}):
        h, best = hf.get(t), min(single[(t, False)]["ms"], single[(t, True)]["ms"])
        if h:
            print(f"target: single run <= 0.5x HF per step on {t} thread(s): "
                  f"{'met' if best <= 0.5 * h['ms'] else 'MISSED'} ({best / h['ms']:.2f}x)")
    if not args.no_compile_times:
        with tempfile.TemporaryDirectory(prefix="inductor-cold-") as cache:
            cold, ok = compile_seconds(Path(cache))
            warm, _ = compile_seconds(Path(cache))
        saving = single[(1, False)]["ms"] - single[(1, True)]["ms"]
        print(f"\ncompile (fresh process, 1 thread): cold {cold:.1f} s (empty cache), warm {warm:.1f} s"
              f"{'' if ok else ' (compile failed: eager)'}; compiled saves {saving:.2f} ms/step")
        if saving > 0:
            print(f"  earns itself back after {warm / saving * 1e3:,.0f} steps warm, {cold / saving * 1e3:,.0f} cold")
        else:
            print("  compiled is not faster here: compiling never pays")
    print(f"\nload average after: {loadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
