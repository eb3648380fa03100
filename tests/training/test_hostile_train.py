"""Hostile input to `blackholes train`: refused up front with one line, or stopped cleanly by a signal."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from blackholes.errors import BlackholesError
from blackholes.training import limits
from blackholes.training.config import TrainConfig
from blackholes.io.recording import Recording
from support import assert_one_line_error, run_blackholes
from train_helpers import SMALL_CLI, bits, write_corpus


@pytest.fixture
def corpus(tmp_path):
    return write_corpus(tmp_path / "c.txt", n=250_000)  # long enough for the huge --context below


def refused(*args, words: str) -> str:
    t = time.monotonic()
    p = run_blackholes("train", *args, timeout=60)
    assert time.monotonic() - t < 30  # refused from the sizes, not after trying
    return assert_one_line_error(p.returncode, p.stderr, words)


def test_out_equal_to_corpus_is_refused_naming_both(corpus, tmp_path):
    before = corpus.read_bytes()
    err = refused("--corpus", corpus, "--out", corpus, *SMALL_CLI, words="is the corpus")
    assert err.count(str(corpus)) == 2
    link = tmp_path / "link.txt"
    link.symlink_to(corpus)
    refused("--corpus", link, "--out", tmp_path / "sub" / ".." / "c.txt", *SMALL_CLI, words="is the corpus")
    assert corpus.read_bytes() == before


@pytest.mark.parametrize("args,words", [
    (["--steps", "1000000000000"], "but only"),  # 10^12 records: far more than any disk
    (["--steps", "1000000000000", "--every", "1000000000"], "of memory"),  # the window offsets alone: 8 TB
    (["--width", "1000000", "--heads", "1", "--steps", "1"], "of memory"),  # 10^13 parameters
    (["--context", "200000"], "of memory"),  # attention scores of 4 * 10^10 entries per head and layer
    (["--batch", "1000000000", "--steps", "10"], "of memory"),
    (["--threads", "100000"], "--threads 100000 is more than the"),
])
def test_impossible_sizes_are_refused_before_anything_is_allocated(corpus, tmp_path, args, words):
    out = tmp_path / "r.safetensors"
    cli = ["--vocab", "32", "--no-compile", "--quiet"]
    refused("--corpus", corpus, "--out", out, *cli, *args, words=words)
    assert list(tmp_path.iterdir()) == [corpus]  # no file, no temporary


def test_sizes_are_checked_before_torch_is_imported(corpus, tmp_path):
    code = ("import sys; from blackholes.training.loop import TrainConfig, train\n"
            "from blackholes.errors import BlackholesError\n"
            f"try: train(TrainConfig(corpus={str(corpus)!r}, steps=10**12, vocab=32), {str(tmp_path / 'r')!r})\n"
            "except BlackholesError as e: print('torch' in sys.modules, e)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60).stdout
    assert out.startswith("False ") and "free" in out


def test_disk_and_header_limits(monkeypatch, tmp_path):
    config = TrainConfig(steps=1000, vocab=32, width=16, heads=2, context=16)
    config.validate()
    size = limits.run_size(config)
    assert size.file_bytes == size.header_bytes + size.records * size.record_bytes
    free = size.file_bytes - 1

    class Usage:
        def __init__(self, free):
            self.free = free

    monkeypatch.setattr(limits.shutil, "disk_usage", lambda _: Usage(free))
    with pytest.raises(BlackholesError, match=r"1,001 records x .* but only .* is free in"):
        limits.check_resources(config, tmp_path / "r.safetensors")
    monkeypatch.setattr(limits.shutil, "disk_usage", lambda _: Usage(10**18))
    monkeypatch.setattr(limits, "available_memory", lambda: None)
    tiny = TrainConfig(steps=20_000_000, vocab=1, width=1, heads=1, context=1, optimizer_state=False)
    tiny.validate()
    with pytest.raises(BlackholesError, match="header limit; record fewer steps"):
        limits.check_resources(tiny, tmp_path / "r.safetensors")


def test_run_size_matches_a_real_recording(corpus, tmp_path):
    from blackholes.training.loop import train

    from train_helpers import small

    config = small(corpus, steps=9, every=4, precision="bf16-mixed")
    result = train(config, tmp_path / "r.safetensors", progress=False)
    size = limits.run_size(config)
    rec = Recording(result.path)
    data = sum(rec.header.tensors[k].nbytes for k in rec.keys)
    assert size.records == len(rec) and size.records * size.record_bytes == data
    assert result.path.stat().st_size <= size.file_bytes  # the header estimate is an upper bound


def test_short_corpus_and_fifo_are_one_line(tmp_path):
    short = tmp_path / "short.txt"
    short.write_bytes(b"abc")
    refused("--corpus", short, "--out", tmp_path / "r.safetensors", *SMALL_CLI,
            words="has 3 bytes; a training window needs context + 1 = 17")
    if hasattr(os, "mkfifo"):
        fifo = tmp_path / "fifo"
        os.mkfifo(fifo)
        refused("--corpus", fifo, "--out", tmp_path / "r.safetensors", *SMALL_CLI, words="a FIFO")


# ---------------------------------------------------------------------------- signals


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_sigterm_and_sighup_stop_at_a_step_boundary_and_keep_a_valid_recording(corpus, tmp_path, sig):
    out = tmp_path / "r.safetensors"
    cmd = [sys.executable, "-m", "blackholes", "train", "--corpus", str(corpus), "--out", str(out),
           "--steps", "200000", "--every", "10", "--quiet", *SMALL_CLI]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not (tmps := [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]):
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.05)
        time.sleep(0.5)
        assert Recording(tmps[0], unfinished=True).complete is False  # the temporary never claims to be complete
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    name = signal.Signals(sig).name
    assert proc.returncode == 128 + sig, err
    assert "Traceback" not in err and f"interrupted after" in err and f"({name})" in err
    assert [p.name for p in tmp_path.iterdir() if p.name != corpus.name] == ["r.safetensors"]
    rec = Recording(out)
    meta = rec.metadata
    assert rec.complete is False and meta["stopped_by"] == name
    done = meta["interrupted_at_step"]
    assert done >= 1 and rec.steps.tolist() == list(range(0, done + 1, 10))
    assert sum(meta["input_counts"]) == done * 16  # the windows actually drawn
    rows = bits(rec.tensor("embeddings"))[:, meta["never_seen"]]
    assert np.all(rows == rows[:, :1])


def test_stop_on_signal_asks_once_and_delivers_a_late_signal():
    from blackholes.training.signals import StopOnSignal

    seen = []
    previous = signal.signal(signal.SIGTERM, lambda s, f: seen.append(s))
    try:
        with StopOnSignal() as stop:
            os.kill(os.getpid(), signal.SIGTERM)
            assert stop.requested and stop.name == "SIGTERM" and seen == []  # asked, not acted on
            with pytest.raises(KeyboardInterrupt):  # asked twice: stop now
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(1)
            stop.received = signal.SIGTERM  # ...say a signal came after the loop's last look
        assert seen == [signal.SIGTERM]  # delivered on exit, to the handler that was there before
        with StopOnSignal() as stop:
            stop.received, stop.consumed = signal.SIGTERM, True  # the loop stopped because of it
        assert seen == [signal.SIGTERM]
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_stop_on_signal_leaves_a_worker_threads_signals_alone():
    import threading

    from blackholes.training.signals import StopOnSignal

    before = signal.getsignal(signal.SIGTERM)
    result = []

    def worker():
        with StopOnSignal() as stop:
            result.append((stop.requested, signal.getsignal(signal.SIGTERM) is before))

    t = threading.Thread(target=worker)
    t.start()
    t.join()
    assert result == [(False, True)]
