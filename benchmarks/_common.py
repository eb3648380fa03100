"""What the benchmark scripts share: a contender run in a fresh interpreter, and the read-pass floor.

A contender is Python source that sets ``t0`` before its timed part and a dict ``out``; the
epilogue adds ``seconds`` and prints it as JSON. ``run_child`` returns that dict and the
child's peak RSS (``ru_maxrss``), so each contender's memory is its own.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

EPILOGUE = """
import json as _j
out["seconds"] = time.perf_counter() - t0
print(_j.dumps(out))
"""
CHILD_ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}

# One plain pass over the bytes of tensor ``gamma`` of the safetensors file PATH, 4 MiB at a time.
READ_PASS_SAFETENSORS = """
import time, json
t0 = time.perf_counter()
with open(PATH, "rb", buffering=0) as f:
    n = int.from_bytes(f.read(8), "little")
    info = json.loads(f.read(n))["gamma"]
    f.seek(8 + n + info["data_offsets"][0])
    left = info["data_offsets"][1] - info["data_offsets"][0]
    buf = memoryview(bytearray(1 << 22))
    while left > 0:
        left -= f.readinto(buf[: min(left, len(buf))])
out = {}
"""


def run_child(code: str) -> tuple[dict, int]:
    """Run a contender in a fresh interpreter; (its printed result, peak RSS in bytes)."""
    with tempfile.TemporaryFile() as out:
        p = subprocess.Popen([sys.executable, "-c", code + EPILOGUE], stdout=out, env=CHILD_ENV)
        _, status, usage = os.wait4(p.pid, 0)
        if os.waitstatus_to_exitcode(status) != 0:
            raise SystemExit(f"contender failed with status {os.waitstatus_to_exitcode(status)}")
        out.seek(0)
        return json.loads(out.read().decode().strip().splitlines()[-1]), usage.ru_maxrss * 1024
