"""Benchmark: `blackholes.repair` against the copy it must make anyway, and against an in-memory fix.

The stand-in is Qwen3-4B-shaped (151,936 x 2,560 float32, 1.56 GB, in one safetensors file as
``model.embed_tokens.weight``) with 13 planted holes (2,100 rows). Each contender runs in a fresh
interpreter (benchmarks/_common.py), one after the other, on a warm page cache:

- ``copy``: ``shutil.copyfile`` of the weights: the floor of any repaired copy;
- ``repair``: ``blackholes.repair(..., recipe="mean")``: scan for the holes, copy, write the rows,
  compare every byte and hash every tensor before and after, re-scan the copy;
- ``in-memory``: what Unsloth-style fixes do: ``safetensors.numpy.load_file``, the mean of the other
  rows in float64, assign, ``save_file``; no check of anything.

    python benchmarks/bench_repair.py [--rows 151936] [--dim 2560] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import run_child  # noqa: E402

SIZES = (1000, 500, 200, 100, 80, 60, 50, 40, 30, 20, 10, 6, 4)  # 2,100 rows in 13 holes


def stand_in(path: Path, rows: int, dim: int) -> list[int]:
    from safetensors.numpy import save_file

    rng = np.random.default_rng(0)
    x = rng.standard_normal((rows, dim), dtype=np.float32)
    picks = rng.permutation(rows)[: sum(SIZES)]
    start = 0
    for size in SIZES:
        x[picks[start:start + size]] = x[picks[start]]
        start += size
    save_file({"model.embed_tokens.weight": x}, str(path))
    return sorted(int(i) for i in picks)


CONTENDERS = {
    "copy": """
import shutil, time
t0 = time.perf_counter()
shutil.copyfile(SRC, OUT + "/model.safetensors")
out = {}
""",
    "repair": """
import time
from blackholes import repair
t0 = time.perf_counter()
r = repair(SRC, OUT, tokens="holes", recipe="mean", matrix="input")
out = {"rows": r.rows, "check": r.report["check"]["ok"]}
""",
    "in-memory": """
import time, json
import numpy as np
from safetensors.numpy import load_file, save_file
t0 = time.perf_counter()
ids = json.load(open(IDS))
t = load_file(SRC)
x = t["model.embed_tokens.weight"]
keep = np.ones(len(x), bool); keep[ids] = False
x[ids] = x[keep].mean(axis=0, dtype=np.float64).astype(np.float32)
save_file(t, OUT + "/model.safetensors")
out = {"rows": len(ids)}
""",
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=151936)
    ap.add_argument("--dim", type=int, default=2560)
    ap.add_argument("--keep", metavar="DIR", help="work in DIR (default: a temporary folder, removed)")
    args = ap.parse_args()
    work = Path(args.keep or tempfile.mkdtemp(prefix="bench-repair-"))
    work.mkdir(parents=True, exist_ok=True)
    src = work / "model.safetensors"
    ids = stand_in(src, args.rows, args.dim)
    (work / "ids.json").write_text(json.dumps(ids))
    print(f"stand-in: {args.rows:,} x {args.dim:,} float32, {src.stat().st_size / 1e9:.2f} GB, {len(ids):,} hole rows")
    with open(src, "rb") as f:  # warm the page cache once
        while f.read(1 << 24):
            pass
    try:
        for name, code in CONTENDERS.items():
            out = work / f"out-{name}"
            if name != "repair":
                out.mkdir()
            head = f"SRC, OUT, IDS = {str(src)!r}, {str(out)!r}, {str(work / 'ids.json')!r}\n"
            t0 = time.perf_counter()
            result, rss = run_child(head + code)
            print(f"{name:<10} {result['seconds']:7.2f} s  peak RSS {rss / 1e9:5.2f} GB  "
                  f"({time.perf_counter() - t0:.2f} s with start-up)  {json.dumps({k: v for k, v in result.items() if k != 'seconds'})}")
            shutil.rmtree(out)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
