"""Benchmark token categories and the under-trained indicators.

1. categorize(): a ~150k-token byte-level BPE tokenizer, trained here with the
   tokenizers library on generated words in four scripts (Latin, Cyrillic, Thai, Han;
   cached, deterministic), categorized whole against a 151,936-row matrix, best of N.
   Target: <= 3 s.
2. indicators(): on the Qwen3-4B-shaped stand-in of bench_scan.py (151,936 x 2,560
   float32, 13 planted holes = the reference set), side by side, each in its own process
   with a warm page cache: one plain read pass, scan(), and scan() + indicators().
   Reported: seconds, passes over the matrix (counted by the reader), peak RSS.
   Targets: at most 3 more read passes than the plain scan; peak memory <= tensor + 25%.

Usage:
    python benchmarks/bench_vocabulary.py [--repeat 3]
    python benchmarks/bench_vocabulary.py --rows 20000 --vocab 20000 --repeat 1   # a quick check
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import bench_scan  # noqa: E402  (the stand-in, the child runner)

ROWS = 151_936


def build_tokenizer(folder: Path, vocab_size: int, seed: int = 0) -> Path:
    """Train (once) a byte-level BPE on generated words; later runs reuse the file."""
    path = folder / f"bpe-{vocab_size}-seed{seed}.json"
    if path.exists():
        return path
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    alphabets = ["abcdefghijklmnopqrstuvwxyz", "".join(map(chr, range(0x430, 0x450))),
                 "".join(map(chr, range(0xE01, 0xE2F))), "".join(map(chr, range(0x4E00, 0x4E00 + 3000)))]
    words = ["".join(rng.choice(alphabets[n % 4]) for _ in range(rng.randint(2, 9))) for n in range(2 * vocab_size)]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=1, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    print(f"training a {vocab_size:,}-token byte-level BPE (once) ...", file=sys.stderr)
    tok.train_from_iterator((" ".join(words[i:i + 1000]) for i in range(0, len(words), 1000)), trainer)
    tok.add_special_tokens([f"<|reserved_special_token_{i}|>" for i in range(8)])
    from blackholes.io.atomic import atomic_path

    with atomic_path(path) as tmp:
        tok.save(str(tmp))
    return path


def build_small_standin(folder: Path, rows: int, dim: int) -> Path:
    """A smaller stand-in made as bench_scan's (random normal * 0.02, planted groups scaled down)."""
    import json as _json

    from blackholes.io.atomic import atomic_path

    path = folder / f"vocab-standin-{rows}x{dim}-f32.safetensors"
    if path.exists():
        return path
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(bench_scan.SEED)
    x = (rng.standard_normal((rows, dim), dtype=np.float32) * np.float32(0.02))
    sizes = [max(2, s * rows // ROWS) for s in bench_scan.SIZES]
    picks = rng.permutation(rows)[: sum(sizes)]
    start = 0
    for size in sizes:
        x[picks[start:start + size]] = x[picks[start]]
        start += size
    header = _json.dumps({"gamma": {"dtype": "F32", "shape": [rows, dim], "data_offsets": [0, x.nbytes]}}).encode()
    header += b" " * (-len(header) % 8)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(len(header).to_bytes(8, "little") + header + x.tobytes())
    return path


def time_categorize(path: Path, rows: int, repeat: int) -> tuple[float, dict]:
    from tokenizers import Tokenizer

    from blackholes.analysis.vocabulary import categorize

    tok = Tokenizer.from_file(str(path))
    best, cats = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        cats = categorize(tok, rows=max(rows, tok.get_vocab_size()))  # the model's padded row count
        best = min(best, time.perf_counter() - t0)
    return best, cats


CHILDREN = {
    "read pass (floor)": bench_scan.CONTENDERS["read pass (floor)"],
    "scan()": """
import time
from blackholes.analysis.groups import scan
t0 = time.perf_counter()
r = scan(PATH)
out = dict(groups=len(r.groups), black_hole_tokens=r.black_hole_tokens)
""",
    "scan() + indicators()": """
import time
from blackholes.analysis.groups import scan
from blackholes.analysis.indicators import indicators
from blackholes.sources import load_matrix
t0 = time.perf_counter()
m = load_matrix(PATH)
r = scan(m)
t1 = time.perf_counter()
ind = indicators(m, holes=r.groups)
out = dict(groups=len(r.groups), indicators_seconds=time.perf_counter() - t1, passes=ind.passes,
           main=ind.main, candidates=len(ind.candidates), reference=len(ind.reference))
""",
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", default=os.path.join(tempfile.gettempdir(), "blackholes-bench"))
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--vocab", type=int, default=150_000, help="tokens in the trained tokenizer")
    ap.add_argument("--rows", type=int, default=ROWS, help="matrix rows (a smaller stand-in below 151,936)")
    ap.add_argument("--dim", type=int, default=bench_scan.D)
    args = ap.parse_args()
    folder = Path(args.dir)
    load = " ".join(open("/proc/loadavg").read().split()[:3]) if os.path.exists("/proc/loadavg") else "?"
    print(f"machine: {os.cpu_count()} CPUs, load average {load} at start; best of {args.repeat}\n")

    if args.rows == ROWS and args.dim == bench_scan.D:
        path = bench_scan.build_standin(folder)
    else:
        path = build_small_standin(folder, args.rows, args.dim)
    tensor = args.rows * args.dim * 4
    bench_scan.run_child([sys.executable, "-c", CHILDREN["read pass (floor)"].replace("PATH", repr(str(path)))
                          + bench_scan.EPILOGUE])  # warm the page cache
    best: dict[str, tuple[float, int, dict]] = {}
    for _ in range(args.repeat):
        for name, code in CHILDREN.items():
            _, rss, stdout = bench_scan.run_child(
                [sys.executable, "-c", code.replace("PATH", repr(str(path))) + bench_scan.EPILOGUE])
            found = json.loads(stdout.strip().splitlines()[-1])
            if name not in best or found["seconds"] < best[name][0]:
                best[name] = (found["seconds"], max(rss, best.get(name, (0, 0, {}))[1]), found)
    print(f"stand-in: {path} ({args.rows:,} x {args.dim:,} F32, {tensor / 1e9:.2f} GB)")
    print("| method | seconds | peak RSS (GB) | RSS / tensor |")
    print("| --- | ---: | ---: | ---: |")
    for name, (s, rss, _) in best.items():
        print(f"| {name} | {s:.3f} | {rss / 1e9:.2f} | {rss / tensor:.2f}x |")
    floor = best["read pass (floor)"][0]
    info = best["scan() + indicators()"][2]
    print(f"\nindicators(): {info['indicators_seconds']:.2f} s = {info['indicators_seconds'] / floor:.1f} read-pass "
          f"times; {info['passes']:.2f} passes over the matrix (target: <= 3 more than the scan); main "
          f"{info['main']}, reference {info['reference']:,} rows, {info['candidates']:,} candidates")

    # Categories last: a child forked from a parent holding a big tokenizer would count its pages.
    tok_path = build_tokenizer(folder, args.vocab)
    seconds, cats = time_categorize(tok_path, ROWS, args.repeat)
    print(f"\ncategorize(): {len(cats):,} rows ({cats.vocab_size:,} tokens) in {seconds:.2f} s (target <= 3 s)")
    print(f"  categories: {cats.count_by(field='category')}")
    print(f"  scripts:    {dict(list(cats.count_by(field='script').items())[:6])}")
    load = " ".join(open("/proc/loadavg").read().split()[:3]) if os.path.exists("/proc/loadavg") else "?"
    print(f"load average at end: {load}")


if __name__ == "__main__":
    main()
