"""Benchmark: `blackholes dynamics` on a 10,000-step 128 x 64 BF16 recording.

Side by side, in one run:

* ``analyze()``       — the full analysis (every step + the sampled sections), memory-mapped;
* ``CLI``             — the whole ``blackholes dynamics`` process (start-up included), ``--quiet``;
* ``original``        — the original notebook's method: ``safetensors.torch.load_file`` of the whole
                        recording, ``.float()``, then its seven ``torch.cdist`` checks (sampled steps only);
                        and, for a like-for-like count of steps, the same method at every recorded step.

The recording is generated deterministically (or pass ``--recording`` to use a real one, e.g. the
train engineer's ``/tmp/gatsby_run.safetensors``): 49 untrained rows that share one point and one
gradient at every step, 79 trained rows that each move on their own; values rounded to bf16.

    python benchmarks/bench_dynamics.py                 # target: analyze() <= 2 s
    python benchmarks/bench_dynamics.py --recording /tmp/gatsby_run.safetensors --repeat 5
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

STEPS, VOCAB, DIM = 10_000, 128, 64
UNTRAINED = [t for t in range(VOCAB) if t < 10 or 11 <= t < 32 or t >= 123 or t in (35, 37, 38, 43, 47, 60, 61,
                                                                                    62, 64, 92, 94, 95, 96)]


def make_recording(path: Path, steps: int = STEPS, vocab: int = VOCAB, dim: int = DIM, seed: int = 0) -> Path:
    """Write a realistic BF16 recording: untrained rows identical at every step, trained rows moving."""
    import torch
    from safetensors.torch import save_file

    from blackholes.io.dtypes import bf16_from_float32

    rng = np.random.default_rng(seed)
    untrained = np.zeros(vocab, bool)
    untrained[[t for t in UNTRAINED if t < vocab]] = True
    n = steps + 1
    emb = np.empty((n, vocab, dim), np.uint16)
    grads = np.empty((n, vocab, dim), np.uint16)
    logits = np.empty((n, vocab), np.uint16)
    pos = np.full((vocab, dim), 0.02, np.float32)  # one shared point (sigma = 0)
    grads[0] = 0
    for t in range(n):
        if t:
            g = rng.standard_normal((vocab, dim), dtype=np.float32) * np.float32(0.05 / np.sqrt(t))
            g[untrained] = g[np.flatnonzero(untrained)[0]]  # one shared gradient for the hole
            gb = bf16_from_float32(g)
            grads[t] = gb
            update = np.float32(1e-3) * np.sign(g)
            pos = (bf16_from_float32(pos - update).astype(np.uint32) << 16).view(np.float32)
        emb[t] = bf16_from_float32(pos)
        lg = pos @ pos.mean(axis=0)
        logits[t] = bf16_from_float32(lg.astype(np.float32))

    def bf16(a):
        return torch.from_numpy(a.view(np.int16)).view(torch.bfloat16)

    losses = np.full(n, np.nan, np.float32)
    losses[1:] = np.linspace(4.8, 1.5, steps, dtype=np.float32)
    tensors = {"embeddings": bf16(emb), "grads": bf16(grads), "logits": bf16(logits),
               "losses": bf16(bf16_from_float32(losses))}
    save_file(tensors, str(path))
    return path


def time_best(fn, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def original_every_step(path: Path, untrained: list[int]) -> None:
    """The notebook's method stretched to every recorded step (what `analyze()` covers)."""
    original_method(path, untrained, steps=range(_steps(path)))


def _steps(path: Path) -> int:
    from blackholes.io.safetensors import read_header

    return read_header(path).tensors["embeddings"].shape[0]


def original_method(path: Path, untrained: list[int], steps=(0, 1, 2, 10, 100, 1000, 10000)) -> None:
    """The notebook: load everything, widen to float32, cdist at the seven sampled steps."""
    import torch
    from safetensors.torch import load_file

    data = load_file(str(path))
    embeddings = data["embeddings"].float()
    gradients = data["grads"].float()
    logits = data["logits"].float()
    idx = torch.tensor(untrained, dtype=torch.long)
    for step in steps:
        if step >= embeddings.shape[0]:
            continue
        ul = logits[step, idx]
        ul.mean().item(), ul.std().item(), (ul.max() - ul.min()).item()
        if step:
            g = gradients[step, idx, :]
            torch.cdist(g, g, p=2).max().item()
            torch.norm(g, p=2, dim=1).std().item()
        p = embeddings[step, idx, :]
        torch.cdist(p, p, p=2).max().item()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recording", type=Path, help="use this recording instead of generating one")
    ap.add_argument("--tokens", default=None, help="untrained ids for --recording without never_seen metadata")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()

    from blackholes.analysis.dynamics import analyze
    from blackholes.analysis.ids import format_ids

    tmp = None
    if args.recording:
        path = args.recording
        tokens = args.tokens
    else:
        tmp = tempfile.TemporaryDirectory()
        path = Path(tmp.name) / "bench_recording.safetensors"
        t0 = time.perf_counter()
        make_recording(path)
        print(f"generated {path.name} ({path.stat().st_size / 1e6:.0f} MB) in {time.perf_counter() - t0:.1f} s")
        tokens = format_ids(UNTRAINED).replace(" ", "")
    print(f"load average: {open('/proc/loadavg').read().split()[:3]}  cpus: {os.cpu_count()}")

    result = analyze(path, tokens=tokens)
    untrained = result.untrained_tokens
    print(f"recording: {result.shape}, {result.dtype}; {len(untrained)} untrained; rigid body: {result.rigid_body}")
    if not args.recording:  # the generated hole shares one point and one gradient at every step, by construction
        assert result.rigid_body, f"expected a rigid body on the generated recording: {result.verdict}"
        assert untrained == UNTRAINED and result.identical_all_steps == dict.fromkeys(
            ("logits", "grads", "positions"), True), result.identical_all_steps
        assert result.trained_first_divergence["positions"] == 1, result.trained_first_divergence

    t_api = time_best(lambda: analyze(path, tokens=tokens), args.repeat)
    cli = [sys.executable, "-m", "blackholes", "dynamics", str(path), "--quiet"]
    if tokens:
        cli += ["--tokens", tokens]
    t_cli = time_best(lambda: subprocess.run(cli, check=True), args.repeat)
    t_orig = time_best(lambda: original_method(path, untrained), args.repeat)
    t_orig_all = time_best(lambda: original_every_step(path, untrained), min(args.repeat, 2))

    print(f"{'method':58s} {'best of ' + str(args.repeat):>10s}")
    print(f"{'analyze(): every step + sampled sections (mmap, numpy)':58s} {t_api:9.2f}s")
    print(f"{'blackholes dynamics --quiet (whole process)':58s} {t_cli:9.2f}s")
    print(f"{'original: load_file + .float() + 7 sampled cdist checks':58s} {t_orig:9.2f}s")
    print(f"{'original method at every step (cdist x 2 per step)':58s} {t_orig_all:9.2f}s")
    print(f"target analyze() <= 2 s: {'met' if t_api <= 2 else 'NOT met'}")
    if tmp:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
