"""Sizes of a training run, worked out before anything is allocated, and checked against the machine.

``--steps 1000000000000`` or a huge ``--batch`` / ``--width`` / ``--context`` would
otherwise end in a ``MemoryError`` traceback (or a disk that fills up an hour in).
:func:`run_size` is pure arithmetic on the config — no array is made — and
:func:`check_resources` refuses, with one line, a recording larger than the free disk
space, a run whose estimated memory exceeds what the machine has available, and a
header too large for safetensors. The memory figure is an estimate (parameters,
optimizer state, the activations one step keeps for its backward pass, the window
offsets and buffers); it is meant to catch the impossible, not to budget to the byte.

>>> from blackholes.training.config import TrainConfig
>>> size = run_size(TrainConfig(steps=10_000))
>>> size.records, round(size.file_bytes / 1e6)
(10001, 658)
"""

from __future__ import annotations

import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from blackholes.errors import BlackholesError

_RING = 64  # records the loop buffers in memory (see loop._RING)
_WINDOW_BLOCK = 1024  # windows the loop cuts at a time (see loop._WINDOW_BLOCK)


@dataclass(frozen=True)
class RunSize:
    """What a run will need, in bytes (see :func:`run_size`)."""

    records: int
    record_bytes: int  # one record of every recorded tensor
    file_bytes: int  # the finished recording
    header_bytes: int  # its JSON header (estimate: the steps list dominates)
    parameters: int  # number of model parameters
    model_bytes: int  # parameters, gradients, Adam's two moments (+ bf16 copies in bf16-mixed)
    activation_bytes: int  # what one step's forward pass keeps for the backward pass (estimate)
    data_bytes: int  # window offsets, the recorded-step list, the ring buffer, the corpus

    @property
    def memory_bytes(self) -> int:
        return self.model_bytes + self.activation_bytes + self.data_bytes

    def to_json(self) -> dict:
        return {**asdict(self), "memory_bytes": self.memory_bytes}


def parameter_count(config) -> int:
    """Parameters of the byte-level GPT of ``config`` (tied embedding counted once).

    >>> from blackholes.training.config import TrainConfig
    >>> parameter_count(TrainConfig())
    116480
    """
    V, T, D, L, r = config.vocab, config.context, config.width, config.layers, config.mlp_ratio
    block = (4 + 2 * r) * D * D + (9 + r) * D  # qkv + proj + fc + proj weights and biases, two LayerNorms
    return V * D + T * D + L * block + 2 * D  # wte, wpe, blocks, ln_f


def run_size(config, corpus_bytes: int = 0) -> RunSize:
    """The sizes of the run ``config`` describes, by arithmetic alone (safe for any size asked).

    >>> from blackholes.training.config import TrainConfig
    >>> run_size(TrainConfig(steps=10, every=5, optimizer_state=False)).records
    3
    """
    from blackholes.training.recording import recording_specs

    records = config.records()
    record_bytes = sum(s.record_bytes for s in recording_specs(config))
    # JSON: every recorded step number with a comma, the two count lists, the centre
    header = records * (len(str(config.steps)) + 1) + 2 * config.vocab * 21 + config.width * 25 + 4096
    param_bytes = 2 if config.precision == "bf16" else 4
    P = parameter_count(config)
    model = P * param_bytes * 4 + (P * 2 if config.precision == "bf16-mixed" else 0)  # + grad, 2 moments
    return RunSize(
        records=records,
        record_bytes=record_bytes,
        file_bytes=header + records * record_bytes,
        header_bytes=header,
        parameters=P,
        model_bytes=model,
        activation_bytes=_activation_bytes(config),
        data_bytes=_data_bytes(config, records, record_bytes, header, corpus_bytes),
    )


def _activation_bytes(config) -> int:
    """One step's saved activations, counted as fp32 (an upper bound for bf16)."""
    B, T, D, H, L, V, r = (config.batch, config.context, config.width, config.heads, config.layers,
                           config.vocab, config.mlp_ratio)
    per_layer = (10 + 2 * r) * B * T * D + 3 * B * H * T * T  # linear/LN outputs; scores, mask, softmax
    causal_masks = L * T * T  # one bool [T, T] buffer per attention layer
    return 4 * (L * per_layer + 3 * B * T * V + B * T * D) + causal_masks


def _data_bytes(config, records: int, record_bytes: int, header: int, corpus_bytes: int) -> int:
    starts = 8 * config.steps * config.batch  # every window's offset, drawn up front
    windows = 16 * _WINDOW_BLOCK * config.batch * (config.context + 1)  # a block of windows, int64, and a copy
    step_list = 36 * records + 2 * header  # the Python list of recorded steps; the header text and its bytes
    return starts + (config.steps + 1) + windows + step_list + _RING * record_bytes + corpus_bytes


def check_resources(config, out: str | Path, corpus_bytes: int = 0) -> RunSize:
    """Refuse, before anything is allocated, a run the disk or the memory cannot hold.

    ``out`` is the recording's path (its folder's free space is checked). Returns the sizes.
    """
    from blackholes.io.safetensors import MAX_HEADER

    size = run_size(config, corpus_bytes)
    folder = Path(out).parent if str(Path(out).parent) else Path(".")
    while not folder.exists() and folder != folder.parent:  # a folder yet to be made: the disk it will be on
        folder = folder.parent
    free = shutil.disk_usage(folder).free
    if size.file_bytes > free:
        raise BlackholesError(
            f"the recording would take {human_size(size.file_bytes)} ({size.records:,} records x "
            f"{human_size(size.record_bytes)}) but only {human_size(free)} is free in {folder}; "
            "record fewer steps (--every K), drop Adam's state (--no-optimizer-state) or shrink the model"
        )
    available = available_memory()
    if available is not None and size.memory_bytes > available:
        raise BlackholesError(
            f"this run needs about {human_size(size.memory_bytes)} of memory (model and Adam state "
            f"{human_size(size.model_bytes)}, activations {human_size(size.activation_bytes)}, window offsets and buffers "
            f"{human_size(size.data_bytes)}) but {human_size(available)} is available; "
            "lower --steps, --batch, --context, --width or --layers"
        )
    if size.header_bytes > MAX_HEADER:
        raise BlackholesError(
            f"--steps {config.steps:,} with --every {config.every:,} makes {size.records:,} records: the header "
            f"listing their steps (~{human_size(size.header_bytes)}) exceeds safetensors' {human_size(MAX_HEADER)} "
            "header limit; record fewer steps (a larger --every)"
        )
    return size


def available_memory() -> int | None:
    """Bytes of memory available to a new allocation (Linux ``MemAvailable``), or None if unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    import os

    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def human_size(n: int) -> str:
    """``1.5 GB``-style sizes (decimal units).

    >>> human_size(658_000_000), human_size(4096), human_size(3 * 10**15)
    ('658 MB', '4.1 kB', '3,000 TB')
    """
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale or unit == "kB":
            value = n / scale
            if unit == "TB" or value >= 100:
                return f"{value:,.0f} {unit}"
            return f"{value:.2g} {unit}" if value < 10 else f"{value:.0f} {unit}"
    return f"{n} B"  # pragma: no cover

