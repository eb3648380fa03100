"""Benchmark scanning a GGUF model's Q8_0 token_embd against one plain read of its bytes.

Builds (once, deterministically, cached) a Qwen3-4B-shaped GGUF: a 151,936 x 2,560
Q8_0 ``token_embd.weight`` (80 blocks of 34 bytes a row, 413 MB) with the 13 black
holes of bench_scan.py planted in it (2,100 rows), and, unless ``--no-vocab``, a
tokenizer the size of Qwen's in the metadata (151,936 byte-level tokens with their
types, 151,387 merges) so that reading the header costs what it costs for a real
model. Then times, side by side, each in its own subprocess with a warm page cache:

  read pass        one plain pass over the tensor's bytes (the floor for any exact method)
  import gguf      what the first GGUF source costs a process (excluded from the rows below)
  load_gguf        header, tensor directory, vocabulary (decoded on access) and the memory map
  find_groups      find_groups(load_gguf(path).array): load + exact groups
  scan()           blackholes.scan(path), once scan accepts GGUF (until then: n/a)
  GGUFReader       gguf.GGUFReader(path), header only, for comparison (--with-reader; slow)

Usage:
    python benchmarks/bench_gguf.py [--dir /tmp/blackholes-bench] [--repeat 3] [--rows 20000]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from _common import run_child  # benchmarks/_common.py

V, D = 151_936, 2_560
SIZES = (814, 704, 306, 228, 11, 10, 6, 5, 4, 4, 3, 3, 2)  # the 13 groups of Qwen3-4B-Instruct-2507
SEED = 20_250_707
BLOCK, BLOCK_BYTES = 32, 34  # Q8_0: a float16 scale and 32 int8 values
N_MERGES = 151_387


def q8_0_rows(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    """n random Q8_0 rows as stored: per block a float16 scale (~0.02/127) and 32 int8s."""
    blocks = np.empty((n, d // BLOCK, BLOCK_BYTES), np.uint8)
    scales = (rng.uniform(0.5, 1.5, (n, d // BLOCK)) * 0.02 / 127).astype(np.float16)
    blocks[:, :, :2] = scales.view(np.uint8).reshape(n, d // BLOCK, 2)
    blocks[:, :, 2:] = rng.integers(-127, 128, (n, d // BLOCK, BLOCK), dtype=np.int8).view(np.uint8)
    return blocks.reshape(n, -1)


def planted_matrix(rows: int) -> np.ndarray:
    """The Q8_0 token_embd with the 13 groups planted (rows picked at random)."""
    rng = np.random.default_rng(SEED)
    data = q8_0_rows(rng, rows, D)
    members = rng.permutation(rows)[: sum(SIZES)]
    start = 0
    for size in SIZES:
        group = members[start : start + size]
        data[group[1:]] = data[group[0]]
        start += size
    return data


def add_vocabulary(w, rows: int) -> None:
    """A byte-level tokenizer shaped like Qwen's: normal pieces, a few control ones, merges."""
    import gguf

    rng = np.random.default_rng(SEED + 1)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyzĠĊ"))
    lengths = rng.integers(1, 9, rows)
    tokens = ["".join(letters[rng.integers(0, len(letters), n)]) + f"{i}" for i, n in enumerate(lengths)]
    n_special = min(293, rows // 10)
    tokens[-n_special:] = [f"<|special_{i}|>" for i in range(n_special)]
    types = [gguf.TokenType.NORMAL] * (rows - n_special) + [gguf.TokenType.CONTROL] * n_special
    w.add_tokenizer_model("gpt2")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges([f"{tokens[i]} {tokens[i + 1]}" for i in range(min(N_MERGES, rows - 1))])


def build(folder: Path, rows: int, vocab: bool) -> Path:
    """Write the GGUF once (atomically); later runs reuse it."""
    import gguf

    from blackholes.io.atomic import atomic_path

    path = folder / f"qwen3-4b-standin-{rows}x{D}-q8_0-{'vocab' if vocab else 'novocab'}-seed{SEED}.gguf"
    if path.exists():
        return path
    folder.mkdir(parents=True, exist_ok=True)
    print(f"building {path} ({rows * D // BLOCK * BLOCK_BYTES / 1e9:.2f} GB tensor) ...", file=sys.stderr)
    with atomic_path(path) as tmp:
        w = gguf.GGUFWriter(tmp, "qwen3")
        if vocab:
            add_vocabulary(w, rows)
        w.add_tensor("token_embd.weight", planted_matrix(rows), raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
    return path


# Each contender runs in a fresh interpreter and prints {"seconds": ..., ...} for its timed
# part (after its imports); peak memory is wait4's rusage of that child.
CONTENDERS = {
    "read pass (floor)": """
import time
t0 = time.perf_counter()
with open(PATH, "rb", buffering=0) as f:
    f.seek(OFFSET)
    left, buf = NBYTES, memoryview(bytearray(1 << 22))
    while left > 0:
        left -= f.readinto(buf[: min(left, len(buf))])
out = {}
""",
    "import gguf (once per process)": """
import time, numpy
t0 = time.perf_counter()
import gguf
out = {}
""",
    "load_gguf (header + map)": """
import time, gguf
from blackholes.sources.gguf import load_gguf
t0 = time.perf_counter()
m = load_gguf(PATH)
out = {}
""",
    "find_groups(load_gguf(path).array)": """
import time, gguf
from blackholes.analysis.exact import find_groups
from blackholes.sources.gguf import load_gguf
t0 = time.perf_counter()
found = find_groups(load_gguf(PATH).array)
n = sum(map(len, found))
out = dict(groups=len(found), black_hole_tokens=n, unique_vectors=ROWS - n + len(found))
""",
    "blackholes.scan(path)": """
import time, gguf
from blackholes.analysis.groups import scan
t0 = time.perf_counter()
try:
    r = scan(PATH)
    out = dict(unique_vectors=r.unique_vectors, groups=len(r.groups), black_hole_tokens=r.black_hole_tokens)
except Exception as e:  # scan does not read GGUF yet
    out = dict(error=str(e).splitlines()[0][:100])
""",
    "decode every token's text": """
import time
from blackholes.sources.gguf import load_gguf
m = load_gguf(PATH)
t0 = time.perf_counter()
texts = list(m.vocabulary.text) if m.vocabulary is not None else []
out = {}
""",
    "gguf.GGUFReader(path) (header)": """
import time, gguf
t0 = time.perf_counter()
r = gguf.GGUFReader(PATH)
out = {}
""",
}
def measure(names, subst: dict, repeat: int, expect: dict) -> dict:
    """Best timed part of each contender, run round-robin so changing load hits each alike."""
    best: dict[str, tuple[float | None, int, str]] = {}
    for _ in range(repeat):
        for name in names:
            code = CONTENDERS[name]
            for k, v in subst.items():
                code = code.replace(k, repr(v))
            found, rss = run_child(code)
            if "error" in found:
                best[name] = (None, rss, found["error"])
                continue
            got = {k: found[k] for k in expect if k in found}
            assert got == {k: expect[k] for k in got}, f"{name} found {got}, expected {expect}"
            if name not in best or best[name][0] is None or found["seconds"] < best[name][0]:
                best[name] = (found["seconds"], max(rss, best.get(name, (0, 0, ""))[1]), "")
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", default=os.path.join(tempfile.gettempdir(), "blackholes-bench"))
    ap.add_argument("--repeat", type=int, default=3, help="runs of each contender; the best is reported")
    ap.add_argument("--rows", type=int, default=V, help=f"rows of token_embd (default {V:,})")
    ap.add_argument("--no-vocab", action="store_true", help="no tokenizer in the metadata")
    ap.add_argument("--with-reader", action="store_true", help="also time gguf.GGUFReader (seconds per run)")
    ap.add_argument("--build-only", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.rows < sum(SIZES):
        raise SystemExit(f"--rows must be at least {sum(SIZES):,} (the planted rows)")

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from blackholes.sources.gguf import read_gguf_header

    if args.build_only:
        build(Path(args.dir), args.rows, not args.no_vocab)
        return
    # built in a child: a forked contender would otherwise inherit (and report) the builder's peak RSS
    subprocess.run([sys.executable, __file__, "--build-only", *sys.argv[1:]], check=True)
    path = build(Path(args.dir), args.rows, not args.no_vocab)
    tensor = read_gguf_header(path).tensors["token_embd.weight"]
    subst = {"PATH": str(path), "OFFSET": tensor.offset, "NBYTES": tensor.nbytes, "ROWS": args.rows}
    expect = dict(unique_vectors=args.rows - sum(SIZES) + len(SIZES), groups=len(SIZES), black_hole_tokens=sum(SIZES))
    names = [n for n in CONTENDERS if args.with_reader or not n.startswith("gguf.")]
    measure(names[:1], subst, 1, expect)  # warm the page cache
    load = " ".join(open("/proc/loadavg").read().split()[:3]) if os.path.exists("/proc/loadavg") else "?"
    print(f"file: {path} ({path.stat().st_size / 1e9:.2f} GB; token_embd Q8_0 {args.rows:,} x {D:,}, "
          f"{tensor.nbytes / 1e6:.0f} MB; vocabulary {'no' if args.no_vocab else 'yes'}), warm page cache")
    print(f"machine: {os.cpu_count()} CPUs, load average {load} at start; best of {args.repeat}\n")

    best = measure(names, subst, args.repeat, expect)
    floor = best["read pass (floor)"][0]
    print("| method | timed part (s) | vs read pass | peak RSS (MB) |")
    print("| --- | ---: | ---: | ---: |")
    for name in names:
        seconds, rss, error = best[name]
        if seconds is None:
            print(f"| {name} | n/a | | {rss / 1e6:.0f} |  ({error})")
        else:
            print(f"| {name} | {seconds:.3f} | {seconds / floor:.2f}x | {rss / 1e6:.0f} |")
    found = best["find_groups(load_gguf(path).array)"][0]
    print(f"\nfind_groups(load_gguf(path).array) / read pass: {found / floor:.2f}x (target <= 2x)")
    load = " ".join(open("/proc/loadavg").read().split()[:3]) if os.path.exists("/proc/loadavg") else "?"
    print(f"load average at end: {load}")


if __name__ == "__main__":
    main()
