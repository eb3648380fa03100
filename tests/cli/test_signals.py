"""One stop line in every command: a signal mid-run gives exit 128 + N and one line of one form,
``blackholes: terminated (SIGTERM): <what was kept>`` (``hung up (SIGHUP)``; Ctrl-C: ``interrupted``; see
cli/main.py:stop_line), whichever command it stops.

Each case starts the real command as a process, waits until it has kept some work (a row, a temporary
recording), sends the signal, and checks the exit status and stderr.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

WORDS = {signal.SIGINT: "interrupted", signal.SIGTERM: r"terminated \(SIGTERM\)", signal.SIGHUP: r"hung up \(SIGHUP\)"}


def slow_matrices(n: int = 6) -> list[np.ndarray]:
    """Matrices of 1.2 M rows: each takes a noticeable moment to hash, so a signal lands mid-run."""
    return [np.random.default_rng(i).integers(0, 20_000, size=(1_200_000, 2)).astype(np.float32) for i in range(n)]


def census_case(folder: Path) -> tuple[list[str], Path]:
    models = []
    for i, x in enumerate(slow_matrices()):
        save_file({"embeddings": x}, str(folder / f"slow{i}.safetensors"))
        models.append(f"slow{i}.safetensors")
    return ["census", *models, "--out", "out", "--workers", "1", "--quiet"], folder / "out" / "census.jsonl"


def history_case(folder: Path) -> tuple[list[str], Path]:
    for i, x in enumerate(slow_matrices()):
        (folder / "run" / f"checkpoint-{i}").mkdir(parents=True)
        save_file({"model.embed_tokens.weight": x}, str(folder / "run" / f"checkpoint-{i}" / "model.safetensors"))
    return ["history", "run", "--out", "h", "--workers", "1", "--quiet"], folder / "h" / "history.jsonl"


def sweep_case(folder: Path) -> tuple[list[str], Path]:
    return ["sweep", "--out", "out", "--seeds", "0-5", "--runs-per-batch", "1", "--steps", "300", "--workers", "1",
            "--vocab", "256", "--width", "16", "--layers", "1", "--heads", "2", "--context", "16", "--quiet"], \
        folder / "out" / "runs.jsonl"


def train_case(folder: Path) -> tuple[list[str], None]:
    return ["train", "--out", "r.safetensors", "--steps", "1000000", "--vocab", "256", "--context", "16", "--width",
            "16", "--layers", "1", "--no-compile", "--every", "10", "--quiet"], None


def started(folder: Path, kept: Path | None) -> bool:
    """Some work is kept: a row in the store, or (train) the temporary recording exists."""
    if kept is None:
        return any(p.name.endswith(".tmp") for p in folder.iterdir())
    return kept.is_file() and kept.read_text().strip() != ""


@pytest.mark.parametrize("command, sig", [("train", signal.SIGTERM), ("census", signal.SIGTERM),
                                          ("sweep", signal.SIGTERM), ("history", signal.SIGTERM),
                                          ("history", signal.SIGHUP), ("census", signal.SIGINT)])
def test_a_signal_mid_run_gives_one_line_of_one_form(command, sig, tmp_path):
    argv, kept = {"train": train_case, "census": census_case, "sweep": sweep_case,
                  "history": history_case}[command](tmp_path)
    proc = subprocess.Popen([sys.executable, "-m", "blackholes", *argv], cwd=tmp_path, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not started(tmp_path, kept):
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.02)
        if kept is None:
            time.sleep(0.5)  # train: a few steps recorded
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + sig and "Traceback" not in err, err
    ours = [line for line in err.splitlines() if line.startswith("blackholes:")]
    assert len(ours) == 1 and ours[0] == err.strip().splitlines()[-1], err
    assert re.fullmatch(rf"blackholes: {WORDS[sig]}: \S.*", ours[0]), ours[0]
    if kept is not None:  # the rows it says it kept are there, and the same command again goes on
        rows = len(kept.read_text().splitlines())
        assert f"{rows:,} " in ours[0] and "run the same command again to go on" in ours[0], ours[0]
    else:
        assert "interrupted after " in ours[0] and "partial recording (complete: false)" in ours[0], ours[0]
