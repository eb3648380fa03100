"""Benchmark: the exact per-step census of a 10,000-step 128 x 64 BF16 recording.

Side by side, in one process, warm page cache, best of ``--repeat``:

* ``read pass``  — one plain pass over the ``embeddings`` bytes (``readinto``): the floor;
* ``census``     — :func:`blackholes.analysis.lifecycle.census_of_recording`: header, memory map,
                   10,001 exact partitions, events, last motion, lineages and phases.

The recording is generated deterministically (cached under ``/tmp/blackholes-bench/``): every row
starts at one shared point; trained tokens leave the hole in batches over the first ~4,000 steps
(some as pairs, which dissolve 500 steps later), two rows merge at step 3,000 and part at 3,500; every group
moves by its own sign update, rounded to bf16, with a decaying rate, so the hole freezes early and
the trained rows stop at 90% of the run (the rate reaches 0). ``--recording PATH`` times a real recording instead.

    python benchmarks/bench_lifecycle.py                     # target: census <= 1 s
    python benchmarks/bench_lifecycle.py --steps 1000        # reduced size, a quick check
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

VOCAB, DIM = 128, 64
NEVER_SEEN = [t for t in range(VOCAB) if t < 10 or 11 <= t < 32 or t >= 123 or t in (35, 37, 38, 43, 47, 60, 61,
                                                                                     62, 64, 92, 94, 95, 96)]
LEAVE_AT = [1, 2, 3, 5, 8, 13, 21, 34, 55, 89, 144, 233, 377, 610, 987, 1597, 2584, 4181]


def make_recording(path: Path, steps: int, seed: int = 0) -> Path:
    """Write the synthetic recording described in the module docstring (``embeddings`` only)."""
    from blackholes.io.dtypes import bf16_from_float32
    from blackholes.io.safetensors import save_safetensors
    from blackholes.io.recording import encode_metadata

    rng = np.random.default_rng(seed)
    trained = [t for t in range(VOCAB) if t not in set(NEVER_SEEN)]
    batches = np.array_split(rng.permutation(trained), len(LEAVE_AT))
    leave = {s: b for s, b in zip(LEAVE_AT, batches) if s <= steps}
    part = {s + 500: b[1] for s, b in leave.items() if len(b) >= 4}  # each pair dissolves 500 steps later
    label = np.zeros(VOCAB, np.int64)  # group of each token: all in group 0 (the hole)
    emb = np.empty((steps + 1, VOCAB, DIM), np.uint16)
    pos = np.full((VOCAB, DIM), 0.02, np.float32)
    for t in range(steps + 1):
        if t in leave:
            b = leave[t]
            label[b] = b  # each its own point ...
            if len(b) >= 4:
                label[b[1]] = b[0]  # ... but the first two leave together, as a pair
        if t in part:
            label[part[t]] = part[t]
        if t == 3000 and steps >= 3000:
            a, b = trained[0], trained[1]
            pos[b] = pos[a]  # a merger: b snaps onto a and moves with it
            label[b] = label[a]
        if t == 3500 and steps >= 3500:
            label[trained[1]] = trained[1]
        if t:
            sign = np.sign(rng.standard_normal((VOCAB, DIM), dtype=np.float32))[label]  # one update per group
            rate = np.where(label == 0, 1e-3 * np.exp(-t / 300), 1e-3 * max(0.0, 1 - t / (0.9 * steps))).astype(np.float32)
            pos = pos - rate[:, None] * sign
            pos = (bf16_from_float32(pos).astype(np.uint32) << 16).view(np.float32)
        emb[t] = bf16_from_float32(pos)
    meta = encode_metadata({"steps": list(range(steps + 1)), "never_seen": NEVER_SEEN})
    save_safetensors(path, {"embeddings": (emb, "BF16")}, metadata=meta)
    return path


def read_pass(path: Path) -> None:
    """Read the embeddings' bytes once, 4 MB at a time (what any exact method must do)."""
    from blackholes.io.safetensors import read_header

    info = read_header(path).tensors["embeddings"]
    with open(path, "rb", buffering=0) as f:
        f.seek(info.start)
        left, buf = info.nbytes, memoryview(bytearray(4 << 20))
        while left > 0:
            left -= f.readinto(buf[: min(left, len(buf))])


def best_of(fn, repeat: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=10_000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--recording", type=Path, help="time a real recording instead of the generated one")
    args = ap.parse_args()
    from blackholes.analysis.lifecycle import census_of_recording

    path = args.recording
    if path is None:
        folder = Path("/tmp/blackholes-bench")
        folder.mkdir(exist_ok=True)
        path = folder / f"lifecycle-{args.steps}x{VOCAB}x{DIM}-bf16-seed0.safetensors"
        if not path.exists():
            t0 = time.perf_counter()
            make_recording(path, args.steps)
            print(f"generated {path} in {time.perf_counter() - t0:.1f} s")
    census_of_recording(path)  # warm the page cache and the imports
    floor, _ = best_of(lambda: read_pass(path), args.repeat)
    seconds, c = best_of(lambda: census_of_recording(path), args.repeat)
    R, V, D = c.shape
    print(f"recording: {path}  [{R:,} x {V} x {D}] {c.dtype}, {path.stat().st_size / 1e6:.0f} MB")
    print(f"  holes at the end: {int(c.holes[-1])}, tokens in holes: {int(c.tokens_in_holes[-1])}, "
          f"events: {len(c.events)}, lineages: {len(c.lineages)}, partition changes: {len(c.partition_changes)}")
    print(f"  frozen from: {c.frozen_from}")
    print(f"| method | best of {args.repeat} (s) |\n| --- | ---: |")
    print(f"| read pass (floor) | {floor:.3f} |\n| census_of_recording() | {seconds:.3f} |")
    print(f"census / read pass: {seconds / floor:.1f}x; target census <= 1 s: {'met' if seconds <= 1 else 'NOT met'}")


if __name__ == "__main__":
    main()
