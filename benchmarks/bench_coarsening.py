"""Benchmark: the coarsening sweep (``blackholes sweep --no-train``) at the issue's size.

1,000 σ values (0, then geometric from 1e-9 to 1e-1) × 2,200 rows × 2,560 dims, rounded to BF16,
one seed, two centres:

* ``grid``   — a centre on the bf16 grid, like a real model's hole vector (``--centre MASK``):
               every row stays in the hole until σ·ε reaches half a ULP of some coordinate, so
               the long stretch of σ with a few excursions per row is the slow case;
* ``random`` — ``--centre random`` (0.02·N(0, 1) in float32, off the grid, as ``train`` starts).

Timed: the whole sweep of one seed (drawing the noise, sorting it, every σ: the centre's runs by
bisection, the widest row, the holes), best of ``--repeat``; and, for comparison, the brute-force
way — build every row, round it, ``find_groups`` and an elementwise ULP maximum — on ``--check``
σ values spread over the grid, extrapolated to the whole grid. The same σ values are checked for
equality (holes, sizes and widest row) between the two.

    python benchmarks/bench_coarsening.py                          # target: <= 60 s for 1,000 σ
    python benchmarks/bench_coarsening.py --sigmas 100 --dim 256   # reduced size, a quick check
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from blackholes.analysis.exact import find_groups
from blackholes.io.dtypes import bf16_from_float32, to_float32, ulp_key
from blackholes.pipelines import coarsening as C


def centre_of(kind: str, draw: np.ndarray) -> np.ndarray:
    centre = draw * C.CENTRE_SCALE
    return to_float32(bf16_from_float32(centre), "BF16") if kind == "grid" else centre


def timed_sweep(cloud, sigmas) -> tuple[float, dict]:
    """Seconds for every σ, and {σ: (sizes, widest)} of the σ values."""
    t0 = time.perf_counter()
    found = {s: ([len(h) for h in holes], ulps) for s, holes, ulps in C.coarsen(cloud, sigmas)}
    return time.perf_counter() - t0, found


def brute_force(centre, eps, sigma, dtype="BF16") -> tuple[list[int], int]:
    """Every row built and rounded, exact groups, the widest row: what the sweep avoids."""
    rows = C.perturbed(centre, eps, sigma, dtype)
    sizes = [len(g) for g in find_groups(rows)]
    centre_key = ulp_key(C.round_to(centre, dtype), dtype)
    widest = int(np.abs(ulp_key(rows, dtype) - centre_key).max())
    return sizes, widest


def run(kind: str, args) -> None:
    sigmas = [0.0] + np.geomspace(1e-9, 1e-1, args.sigmas - 1).tolist()
    best_total, best_sweep = float("inf"), float("inf")
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        draw, eps = C.draw_noise(args.seed, args.tokens, args.dim)
        centre = centre_of(kind, draw)
        cloud = C.make_cloud(centre, eps, "BF16")
        seconds, found = timed_sweep(cloud, sigmas)
        best_total, best_sweep = min(best_total, time.perf_counter() - t0), min(best_sweep, seconds)
    picks = [sigmas[i] for i in np.unique(np.linspace(0, len(sigmas) - 1, args.check).round().astype(int))]
    t0 = time.perf_counter()
    for s in picks:
        assert brute_force(centre, eps, s) == found[s], f"sweep and brute force disagree at sigma={s}"
    brute = (time.perf_counter() - t0) / len(picks) * len(sigmas)
    with_holes = [s for s in sigmas if found[s][0]]
    print(f"centre {kind:6s}: {best_total:6.2f} s for {len(sigmas):,} sigma (sweep {best_sweep:.2f} s, "
          f"{best_sweep / len(sigmas) * 1e3:.2f} ms per sigma); brute force ~{brute:,.0f} s "
          f"({brute / best_total:,.0f}x); holes up to sigma = {max(with_holes, default=0):.3g}; "
          f"{len(picks)} sigma checked against brute force: equal")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sigmas", type=int, default=1000)
    p.add_argument("--tokens", type=int, default=2200)
    p.add_argument("--dim", type=int, default=2560)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--check", type=int, default=12, help="sigma values compared with brute force")
    p.add_argument("--centre", choices=("grid", "random", "both"), default="both")
    args = p.parse_args()
    t0 = time.perf_counter()
    C.draw_noise(0, 2, 2)  # import torch once, outside the timed part
    print(f"{args.sigmas:,} sigma x {args.tokens:,} rows x {args.dim:,} dims, BF16, best of {args.repeat} "
          f"(importing torch for the noise: {time.perf_counter() - t0:.1f} s, once, not timed)")
    for kind in (("grid", "random") if args.centre == "both" else (args.centre,)):
        run(kind, args)


if __name__ == "__main__":
    main()
