"""Benchmark `blackholes train` against the same recipe written the way a user would.

Side by side, in one run, on the same machine:

  blackholes (API)   blackholes.train.train(): the default recipe (2-layer byte GPT, bf16, eager
                     numerics, batch 1, AdamW, clipping), every step recorded with optimizer
                     state, streamed to a safetensors file. Timed as the whole train() call, and
                     its steady state (step 100 to the end).
  blackholes CLI     the `blackholes train --quiet` process, start to exit (imports, training,
                     fsync), once.
  compiled           the same with --numerics compiled (torch.compile: another rounding, so
                     another recipe; compilation included in the total), --compiled-steps steps.
  bf16-mixed         the API run in --precision bf16-mixed (fp32 master weights and Adam
                     state, bf16 autocast): its ms/step against bf16's (target <= 1.5x).
  HF GPT2 loop       transformers.GPT2LMHeadModel (n_embd 64, n_layer 2, n_head 2,
                     n_positions 128, vocab 128, tied) in bf16, in a plain loop with the same
                     AdamW, clipping and schedule, copying the embedding and its gradient
                     each step. Only when `transformers` is installed (the `bench` extra).
                     Timed over fewer steps; the 10,000-step total is an extrapolation.

Usage:
    python benchmarks/bench_train.py [--steps 10000] [--compiled-steps 1000] [--baseline-steps 1000] [--repeat 2]
                                     [--corpus PATH] [--dir /tmp/blackholes-bench]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
GATSBY = ROOT.parent / "shared" / "data" / "gatsby_clean.txt"


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def bench_blackholes(corpus: str, steps: int, out: Path, numerics: str, threads: int,
                     precision: str = "bf16") -> dict:
    from blackholes.training.loop import TrainConfig, train

    marks: dict[int, float] = {}
    warm = min(100, steps // 2)

    def on_step(step: int) -> None:
        if step == warm:
            marks[step] = time.perf_counter()
            marks["cpu"] = time.process_time()

    config = TrainConfig(corpus=corpus, sigma=0.0, steps=steps, precision=precision, numerics=numerics,
                         threads=threads)
    t0, c0 = time.perf_counter(), time.process_time()
    result = train(config, out, progress=False, on_step=on_step)
    total, cpu = time.perf_counter() - t0, time.process_time() - c0
    steady = (t0 + total - marks[warm]) / (steps - warm)  # includes the final flush + fsync
    steady_cpu = (c0 + cpu - marks["cpu"]) / (steps - warm)  # CPU time: less disturbed by other load
    size = out.stat().st_size
    out.unlink()
    return {"total_s": total, "ms_per_step": steady * 1e3, "startup_s": total - steady * steps,
            "compile_s": result.compile_seconds, "steps": steps, "loss": result.final_loss, "bytes": size,
            "cpu_s": cpu, "cpu_ms_per_step": steady_cpu * 1e3}


def bench_cli(corpus: str, steps: int, out: Path, threads: int) -> dict:
    import resource
    import subprocess

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "blackholes", "train", "--corpus", corpus, "--sigma", "0", "--steps",
                    str(steps), "--out", str(out), "--threads", str(threads), "--quiet"], check=True)
    total = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    out.unlink()
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"total_s": total, "ms_per_step": total / steps * 1e3, "steps": steps, "cpu_s": cpu}


def bench_hf(corpus: str, steps: int, threads: int) -> dict | None:
    try:
        from transformers import GPT2Config, GPT2LMHeadModel
    except ImportError:
        return None
    import torch

    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=128, n_positions=128, n_embd=64, n_layer=2, n_head=2, n_inner=256,
                     activation_function="gelu_new", resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                     tie_word_embeddings=True)
    model = GPT2LMHeadModel(cfg).to(torch.bfloat16)
    with torch.no_grad():  # every row at one point, as the experiment does
        model.transformer.wte.weight.copy_(model.transformer.wte.weight[0].clone())
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    data = torch.from_numpy(np.frombuffer(Path(corpus).read_bytes(), np.uint8).astype(np.int64))
    rng = np.random.default_rng(0)
    embeddings, grads, logits_rec = [], [], []
    W = model.transformer.wte.weight
    t0, c0 = time.perf_counter(), time.process_time()
    mark = None
    for step in range(steps):
        if step == min(100, steps // 2):
            mark = time.perf_counter()
        s = int(rng.integers(0, len(data) - 129))
        x = data[s : s + 129][None]
        out = model(input_ids=x[:, :-1], labels=x[:, :-1])  # HF shifts the labels itself
        out.loss.backward()
        grads.append(W.grad.detach().clone())
        logits_rec.append(out.logits[0, -1].detach().clone())
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        for g in opt.param_groups:
            g["lr"] = 1e-3 * (1 - step / steps)
        opt.step()
        opt.zero_grad()
        embeddings.append(W.detach().clone())
    total, cpu = time.perf_counter() - t0, time.process_time() - c0
    warm = min(100, steps // 2)
    steady = (t0 + total - mark) / (steps - warm)
    return {"total_s": total, "ms_per_step": steady * 1e3, "steps": steps, "loss": float(out.loss.detach()), "cpu_s": cpu}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=10_000)
    ap.add_argument("--compiled-steps", type=int, default=1_000)
    ap.add_argument("--baseline-steps", type=int, default=1_000)
    ap.add_argument("--repeat", type=int, default=2, help="best of N for each contender")
    ap.add_argument("--threads", type=int, default=1, help="torch threads for every contender (train's default 1)")
    ap.add_argument("--corpus", default=str(GATSBY) if GATSBY.exists() else None,
                    help="training text (default: ../shared/data/gatsby_clean.txt, else the packaged corpus)")
    ap.add_argument("--dir", default=tempfile.gettempdir(), help="where the recordings are written (then removed)")
    args = ap.parse_args()
    if args.corpus is None:
        from blackholes.training.loop import default_corpus_path

        args.corpus = str(default_corpus_path())

    import torch

    print(f"machine: {os.cpu_count()} CPUs, torch {torch.__version__}, {torch.get_num_threads()} threads "
          f"(--threads {args.threads}); load average before: {loadavg()}")
    print(f"corpus: {args.corpus}")
    out = Path(args.dir) / f"bench_train_{os.getpid()}.safetensors"
    rows = []

    def best(fn, *a):
        runs = [fn(*a) for _ in range(args.repeat)]
        return min(runs, key=lambda r: r["total_s"])

    r = best(bench_blackholes, args.corpus, args.steps, out, "eager", args.threads)
    rows.append(("blackholes train (API, eager)", r, False))
    rows.append(("blackholes train (CLI process)", bench_cli(args.corpus, args.steps, out, args.threads), False))
    r = best(bench_blackholes, args.corpus, args.compiled_steps, out, "compiled", args.threads)
    rows.append(("--numerics compiled (API)", r, True))
    mixed = best(bench_blackholes, args.corpus, args.steps, out, "eager", args.threads, "bf16-mixed")
    rows.append(("--precision bf16-mixed (API)", mixed, False))
    hf = best(bench_hf, args.corpus, args.baseline_steps, args.threads) if _has_transformers() else None
    if hf is not None:
        rows.append(("HF GPT2LMHeadModel loop", hf, True))
    else:
        print("transformers not installed: HF baseline skipped (pip install -c constraints.txt transformers)")

    print(f"\n{args.steps:,}-step run of the default recipe (bf16, recording every step + optimizer state); "
          f"best of {args.repeat}")
    print(f"{'contender':32} {'steps timed':>11} {'ms/step':>8} {'total s (timed)':>16} {'CPU s (timed)':>14} "
          f"{'10k-step total s':>17}")
    for name, r, extrapolated in rows:
        ten_k = r["total_s"] if r["steps"] == args.steps else r["ms_per_step"] * args.steps / 1e3
        label = f"{ten_k:.1f}" + (" (extrap.)" if extrapolated and r["steps"] != args.steps else "")
        print(f"{name:32} {r['steps']:>11,} {r['ms_per_step']:>8.2f} {r['total_s']:>16.1f} {r['cpu_s']:>14.1f} "
              f"{label:>17}")
    a = rows[0][1]
    print(f"\nblackholes API: recording {a['bytes'] / 1e6:.0f} MB; final loss {a['loss']:.3f}; --numerics compiled: "
          f"torch.compile {rows[2][1]['compile_s']:.1f} s (inside its total)")
    for name, r, _ in rows[:2]:
        print(f"target: {args.steps:,} steps in <= 20 s, {name}: {'met' if r['total_s'] <= 20 else 'MISSED'} "
              f"({r['total_s']:.1f} s)")
    ratio = mixed["ms_per_step"] / a["ms_per_step"]
    cpu_ratio = mixed["cpu_ms_per_step"] / a["cpu_ms_per_step"]
    print(f"target: bf16-mixed per step within 1.5x of bf16: {'met' if ratio <= 1.5 else 'MISSED'} "
          f"(wall {mixed['ms_per_step']:.2f} vs {a['ms_per_step']:.2f} ms/step = {ratio:.2f}x; CPU "
          f"{mixed['cpu_ms_per_step']:.2f} vs {a['cpu_ms_per_step']:.2f} ms/step = {cpu_ratio:.2f}x; recording "
          f"{mixed['bytes'] / 1e6:.0f} MB in fp32 with embeddings_bf16)")
    print(f"load average after: {loadavg()}  (2 shared cores: wall time > CPU time means others were running)")
    return 0


def _has_transformers() -> bool:
    try:
        import transformers  # noqa: F401
    except ImportError:
        return False
    return True


if __name__ == "__main__":
    sys.exit(main())
