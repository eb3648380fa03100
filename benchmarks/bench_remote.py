"""Remote safetensors by byte range: ``load_remote`` against a plain download of the same bytes.

A generated safetensors file (a 151,936 x 2,560 BF16 embedding, the Qwen3-4B shape, plus other
tensors that make the file bigger) is served by the tests' Range-capable HTTP server, in its own
process on 127.0.0.1. Each repeat times, side by side (order alternating):

- ``load_remote(url)``: header probe, then the tensor's byte range in chunks into one array;
- a plain sequential ``urllib`` download of exactly the tensor's byte range (one request,
  ``readinto`` a preallocated buffer) — the speed the server and the loopback allow.

It prints the bytes fetched against the tensor's bytes and the throughput ratio.

    python benchmarks/bench_remote.py                          # full size (~0.8 GB tensor, ~1.3 GB file)
    python benchmarks/bench_remote.py --rows 16384 --repeat 2  # a quick check
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SERVER = ROOT / "tests" / "sources" / "http_server.py"
KEY = "model.embed_tokens.weight"

_SERVE = """
import importlib.util, sys
spec = importlib.util.spec_from_file_location("http_server", sys.argv[1])
hs = importlib.util.module_from_spec(spec); sys.modules["http_server"] = hs; spec.loader.exec_module(hs)
with hs.serve(sys.argv[2]) as server:
    print(server.url, flush=True)
    sys.stdin.read()  # until the benchmark closes our stdin
    print(server.bytes_sent, flush=True)
"""


def make_model(folder: Path, rows: int, cols: int, extra_mib: int) -> Path:
    """The benchmark file (reused when present): the embedding between two other tensors."""
    from blackholes.io.safetensors import save_safetensors

    path = folder / f"remote-bench-{rows}x{cols}-bf16-extra{extra_mib}.safetensors"
    if path.is_file():
        return path
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    emb = rng.integers(0, 1 << 16, size=(rows, cols), dtype=np.uint16)
    half = max(1, (extra_mib << 20) // 4 // 2)  # float32 elements in each of the two others
    save_safetensors(path, {
        "lm_head.bias": np.zeros(half, np.float32),  # before the embedding in the file
        KEY: (emb, "BF16"),
        "model.norm.weight": np.ones(half, np.float32),  # and after it
    })
    return path


def plain_download(url: str, start: int, stop: int) -> float:
    """Seconds for one sequential ranged GET of bytes start..stop-1, read into a fresh buffer
    (allocated as load_remote allocates its array, so both pay the same page faults)."""
    t = time.perf_counter()
    out = memoryview(np.empty(stop - start, np.uint8))
    request = urllib.request.Request(url, headers={"Range": f"bytes={start}-{stop - 1}"})
    with urllib.request.urlopen(request) as r:
        assert r.status == 206, r.status
        done = 0
        while done < len(out):
            n = r.readinto(out[done : done + (16 << 20)])
            if not n:
                raise RuntimeError(f"short read: {done} of {len(out)} bytes")
            done += n
    return time.perf_counter() - t


def timed_load(url: str):
    from blackholes.sources.remote import load_remote

    t = time.perf_counter()
    m = load_remote(url, key=KEY)
    return time.perf_counter() - t, m


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=151_936)
    p.add_argument("--cols", type=int, default=2_560)
    p.add_argument("--extra-mib", type=int, default=512, help="other tensors' size, MiB (default 512)")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--dir", type=Path, default=Path("/tmp/blackholes-bench"))
    args = p.parse_args(argv)

    from blackholes.io.safetensors import read_header

    path = make_model(args.dir, args.rows, args.cols, args.extra_mib)
    info = read_header(path).tensors[KEY]
    print(f"file {path} ({path.stat().st_size:,} bytes); tensor {KEY} {list(info.shape)} BF16, "
          f"{info.nbytes:,} bytes at {info.start:,}")
    server = subprocess.Popen([sys.executable, "-c", _SERVE, str(SERVER), str(path.parent)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        url = server.stdout.readline().strip() + path.name
        _, m = timed_load(url)  # warm-up, untimed (imports, first calls); and a check of the bytes
        expected = np.memmap(path, dtype=np.uint16, mode="r", offset=info.start, shape=info.shape)
        assert np.array_equal(m.array, expected), "load_remote returned other bytes than the file's"
        del m, expected
        plain_download(url, info.start, info.end)
        ours, plain = [], []
        for i in range(args.repeat):
            for what in ("load", "plain") if i % 2 == 0 else ("plain", "load"):
                if what == "load":
                    seconds, m = timed_load(url)
                    ours.append(seconds)
                    fetched = m.bytes_read
                    del m
                else:
                    plain.append(plain_download(url, info.start, info.end))
        server.stdin.close()
        sent = int(server.stdout.readline() or 0)
    finally:
        if not server.stdin.closed:
            server.stdin.close()
        server.wait(timeout=30)
    mb = info.nbytes / 1e6
    print(f"bytes fetched by load_remote: {fetched:,} = tensor {info.nbytes:,} + {fetched - info.nbytes:,} "
          f"(limit: + {1 << 20:,}); server sent {sent:,} in all ({args.repeat + 1} loads + {args.repeat + 1} plain)")
    for name, times in (("load_remote", ours), ("plain urllib", plain)):
        print(f"{name + ':':14s} best {min(times):.3f} s ({mb / min(times):,.0f} MB/s), median "
              f"{statistics.median(times):.3f} s   (runs: {', '.join(f'{t:.3f}' for t in times)})")
    print(f"throughput ratio load_remote / plain: best {min(plain) / min(ours):.2f}, median "
          f"{statistics.median(plain) / statistics.median(ours):.2f} (target >= 0.80)")


if __name__ == "__main__":
    main()
