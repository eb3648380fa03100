"""Benchmark `blackholes census`: a local pool against the same scans one after another, Dask, remote bytes.

Builds (once, deterministically, cached under --dir) 8 models of mixed sizes, up to the
Qwen3-4B-shaped stand-in of bench_scan.py (151,936 x 2,560 float32, 1.56 GB), each a lone
safetensors file with planted black holes, then measures with a warm page cache:

  sequential   blackholes.scan(path) for every model, one after another, in one process
  census -w 1  census(paths, workers=1): the same, through the pool (the census's own overhead)
  census -w 2  census(paths, workers=2): the target is <= 0.6x sequential
  dask         census(paths, scheduler=client) on a LocalCluster (scheduler + 2 worker processes on
               127.0.0.1, started beforehand, as in a notebook): the rows must equal the local pool's;
               overhead per model = (dask - census -w 2) / models, target <= 0.2 s
  remote       census of one model served over HTTP (tests/sources/http_server.py, Range requests) whose
               file holds a large extra tensor: bytes sent must be the tensor's, not the file's

Usage:
    python benchmarks/bench_census.py [--dir /tmp/blackholes-bench] [--repeat 3] [--scale 1.0]
    python benchmarks/bench_census.py --scale 0.05 --repeat 1      # a quick check at a reduced size
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SEED = 20_250_707
# (name, rows, dim, dtype, planted hole sizes): shapes of real vocabularies, the largest first
MODELS = [
    ("gemma-like", 256_000, 2_304, "BF16", (600, 90, 7, 2)),
    ("llama3-1b-like", 128_256, 2_048, "BF16", (250, 3)),
    ("qwen2.5-0.5b-like", 151_936, 896, "BF16", (293, 12, 2)),
    ("llama2-like", 32_000, 4_096, "BF16", (2,)),
    ("phi-like", 51_200, 2_560, "F16", (943, 4)),
    ("gpt2-like", 50_257, 768, "F32", ()),
    ("smollm-like", 49_152, 576, "BF16", (17, 5, 2)),
]
TIMING = ("seconds", "started", "worker")


def load_bench_scan():
    spec = importlib.util.spec_from_file_location("bench_scan", HERE / "bench_scan.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def build_model(folder: Path, name: str, rows: int, dim: int, dtype: str, holes) -> Path:
    """One lone safetensors file (tensor ``model.embed_tokens.weight``), written once, atomically."""
    from blackholes.io.atomic import atomic_path

    path = folder / f"census-{name}-{rows}x{dim}-{dtype.lower()}-seed{SEED}.safetensors"
    itemsize = 4 if dtype == "F32" else 2
    header = json.dumps({"model.embed_tokens.weight": {"dtype": dtype, "shape": [rows, dim],
                                                       "data_offsets": [0, rows * dim * itemsize]}}).encode()
    header += b" " * (-len(header) % 8)
    if path.exists() and path.stat().st_size == 8 + len(header) + rows * dim * itemsize:
        return path
    rng = np.random.default_rng([SEED, rows, dim])
    picks = rng.permutation(rows)[: sum(holes)]
    owner = np.full(rows, -1)
    start = 0
    for g, size in enumerate(holes):
        owner[picks[start : start + size]] = g
        start += size
    shared = _rows(rng, len(holes), dim, dtype)
    print(f"building {path.name} ({rows * dim * itemsize / 1e9:.2f} GB) ...", file=sys.stderr)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(len(header).to_bytes(8, "little") + header)
        for lo in range(0, rows, 16_384):
            hi = min(rows, lo + 16_384)
            block = _rows(rng, hi - lo, dim, dtype)
            mine = owner[lo:hi] >= 0
            block[mine] = shared[owner[lo:hi][mine]]
            f.write(block.tobytes())
    return path


def _rows(rng, n: int, dim: int, dtype: str) -> np.ndarray:
    """Random rows in the storage dtype (BF16 as the top half of float32 bits)."""
    x = (rng.standard_normal((n, dim), dtype=np.float32) * np.float32(0.02))
    if dtype == "F32":
        return x
    if dtype == "F16":
        return x.astype(np.float16)
    return (x.view(np.uint32) >> np.uint32(16)).astype(np.uint16)


def build_all(folder: Path, scale: float) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    if scale >= 1:
        paths = [load_bench_scan().build_standin(folder)]
    else:
        paths = [build_model(folder, "qwen3-4b-standin", int(151_936 * scale), 2_560, "F32", (814, 704, 306, 2))]
    for name, rows, dim, dtype, holes in MODELS:
        paths.append(build_model(folder, name, max(2_000, int(rows * scale)), dim, dtype, holes))
    return paths


def warm(paths: list[Path]) -> None:
    """Read every file once so that every contender finds it in the page cache."""
    for p in paths:
        with open(p, "rb") as f:
            while f.read(64 << 20):
                pass


def timed(fn, repeat: int):
    best, value = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        value = fn()
        best = min(best, time.perf_counter() - t0)
    return best, value


def run_census(sources, repeat: int, **kw):
    from blackholes.pipelines.census import census

    def once():
        with tempfile.TemporaryDirectory() as out:
            return census(sources, out=out, summary=False, **kw)

    return timed(once, repeat)


def strip(rows):
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


def bench_dask(sources, repeat: int, local_rows, local_seconds: float) -> list[tuple]:
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        return [("dask", "skipped: Dask not installed", "")]
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None, worker_dashboard_address=None) as lc, Client(lc) as client:
        seconds, result = run_census(sources, repeat, scheduler=client)
    same = strip(result.rows) == strip(local_rows)
    per_model = (seconds - local_seconds) / len(sources)
    return [("dask LocalCluster, 2 workers", f"{seconds:.3f}", f"rows equal to the local pool's: {same}"),
            ("  overhead per model vs the pool", f"{per_model:+.3f}", "target <= 0.2 s")]


def bench_remote(folder: Path, scale: float) -> list[tuple]:
    """One model over HTTP: bytes the server sent vs the tensor's and the file's."""
    spec = importlib.util.spec_from_file_location("http_server", HERE.parent / "tests" / "sources" / "http_server.py")
    if spec is None or not Path(spec.origin).is_file():
        return [("remote", "skipped: tests/sources/http_server.py not found", "")]
    http_server = importlib.util.module_from_spec(spec)
    sys.modules["http_server"] = http_server  # its dataclasses look their module up there
    spec.loader.exec_module(http_server)
    from safetensors.numpy import save_file

    from blackholes.pipelines.census import census

    serve_dir = folder / "census-remote"
    serve_dir.mkdir(exist_ok=True)
    rows = max(2_000, int(151_936 * scale))
    path = serve_dir / f"model-{rows}.safetensors"
    if not path.exists():
        emb = _rows(np.random.default_rng(1), rows, 1_024, "F32")
        emb[:50] = emb[0]
        save_file({"model.embed_tokens.weight": emb, "extra.weight": np.ones((rows, 3_072), np.float32)}, str(path))
    tensor = rows * 1_024 * 4
    with http_server.serve(serve_dir) as server:
        t0 = time.perf_counter()
        (row,) = census([server.url + path.name], out=None, workers=1).rows
        seconds = time.perf_counter() - t0
        sent = server.bytes_sent
    if row["error"] is not None:
        return [("remote", "failed", row["error"])]
    return [("remote model over HTTP", f"{seconds:.3f}",
             f"server sent {sent:,} B; tensor {tensor:,} B; file {path.stat().st_size:,} B; "
             f"row bytes_read {row['bytes_read']:,} ({sent / tensor:.3f}x the tensor)")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", default=os.path.join(tempfile.gettempdir(), "blackholes-bench"))
    ap.add_argument("--repeat", type=int, default=3, help="runs of each contender; the best is reported")
    ap.add_argument("--scale", type=float, default=1.0, help="fraction of each model's rows (quick checks)")
    ap.add_argument("--skip-dask", action="store_true")
    ap.add_argument("--skip-remote", action="store_true")
    args = ap.parse_args()
    import blackholes

    paths = build_all(Path(args.dir), args.scale)
    sources = [str(p) for p in paths]
    total = sum(p.stat().st_size for p in paths)
    warm(paths)
    seq, _ = timed(lambda: [blackholes.scan(s) for s in sources], args.repeat)
    one, _ = run_census(sources, args.repeat, workers=1, scheduler="local")
    two, local = run_census(sources, args.repeat, workers=2, scheduler="local")
    assert local.failed == 0 and len(local.rows) == len(sources), local.rows
    lines = [("sequential blackholes.scan()", f"{seq:.3f}", "1.00x"),
             ("census --workers 1", f"{one:.3f}", f"{one / seq:.2f}x"),
             ("census --workers 2", f"{two:.3f}", f"{two / seq:.2f}x (target <= 0.6x)")]
    if not args.skip_dask:
        lines += bench_dask(sources, args.repeat, local.rows, two)
    if not args.skip_remote:
        lines += bench_remote(Path(args.dir), args.scale)
    print(f"{len(sources)} models, {total / 1e9:.2f} GB, warm page cache, best of {args.repeat}; "
          f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}")
    print(f"{'method':<36} {'seconds':>9}  note")
    for name, seconds, note in lines:
        print(f"{name:<36} {seconds:>9}  {note}")


if __name__ == "__main__":
    main()
