"""Grow a black hole: train a tiny byte-level GPT from one shared point, recording every step.

Every embedding row starts at one centre ``c`` (plus ``sigma`` times its own
noise); the model is trained on a corpus of bytes with AdamW, and the tied
embedding matrix, its gradient, the last position's logits, the loss and Adam's
state for the matrix are streamed to a safetensors *recording* (see
:mod:`blackholes.recording` for the format). Bytes the corpus never contains
receive identical gradients and so never leave the shared point: with
``sigma=0`` they form a black hole.

>>> from blackholes.training.loop import TrainConfig, train
>>> result = train(TrainConfig(corpus="gatsby_clean.txt", sigma=0.0, steps=10_000), "run.safetensors")
>>> result.never_seen[:3], result.final_loss
([0, 1, 2], 1.6...)

Recording conventions: record ``i`` holds training step ``steps[i]``; record 0
is the initialisation (its ``grads``, ``logits``, ``momentum`` and ``variance``
are zeros and its loss is NaN). For a step ``s``, ``grads`` is the gradient of the
step's loss before clipping, ``logits`` the model's output at the last position
of the step's (first) sequence, computed *before* the update, and
``embeddings`` / ``momentum`` / ``variance`` the state *after* the update.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import numbers
import os
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Callable

import numpy as np

from blackholes.errors import BlackholesError

DTYPES = ("bf16", "fp32")
_SAFETENSORS_NAME = {"bf16": "BF16", "fp32": "F32"}
_RING = 64  # records buffered in memory between writes to disk
_WINDOW_BLOCK = 1024  # training windows cut from the corpus at a time


def default_corpus_path() -> Path:
    """The small ASCII corpus that ships with the package (used when no corpus is given).

    >>> default_corpus_path().name
    'default_corpus.txt'
    """
    return Path(str(resources.files("blackholes") / "data" / "default_corpus.txt"))


@dataclass
class TrainConfig:
    """Every hyper-parameter of a run. The defaults are the "Lil Gatsby" recipe.

    >>> TrainConfig(corpus="gatsby_clean.txt", sigma=0.0, steps=10_000, dtype="bf16")
    """

    corpus: str | None = None  # path to any file of bytes; None = default_corpus_path()
    sigma: float = 0.0  # spread of the initial embedding rows around the shared centre
    steps: int = 10_000
    seed: int = 0
    dtype: str = "bf16"  # parameters, gradients and optimizer state: "bf16" | "fp32"
    # model
    vocab: int = 128
    context: int = 128
    width: int = 64
    layers: int = 2
    heads: int = 2
    mlp_ratio: int = 4
    # optimizer: AdamW, linear decay of the learning rate to 0 over the run
    lr: float = 1e-3
    schedule: str = "linear"  # "linear" | "constant"
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.0
    clip: float = 1.0  # global gradient-norm clipping; 0 = off
    batch: int = 1  # sequences per step, each a random window of context + 1 bytes
    # recording
    every: int = 1  # record every K-th step (step 0 and the last step always)
    optimizer_state: bool = True  # record Adam's momentum and variance for the embedding
    # execution (recorded, but not part of the recipe)
    compile: bool = True  # torch.compile the forward/backward (several times faster on CPU)
    threads: int = 1  # torch intra-op threads (1: fastest for this size on a busy machine, and
    # results that do not depend on the core count); 0 = leave torch's setting

    def validate(self) -> None:
        """Raise :class:`BlackholesError` for any impossible setting."""
        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise BlackholesError(msg)

        need(self.dtype in DTYPES, f"--dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        need(self.schedule in ("linear", "constant"), f"--schedule must be linear or constant, got {self.schedule!r}")
        need(math.isfinite(self.sigma) and self.sigma >= 0, f"--sigma must be a finite number >= 0, got {self.sigma}")
        for name in ("steps", "vocab", "context", "width", "layers", "heads", "mlp_ratio", "batch", "every"):
            value = getattr(self, name)
            ok = isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= 1
            need(ok, f"--{name.replace('_', '-')} must be an integer >= 1, got {value}")
            setattr(self, name, int(value))
        need(self.vocab <= 256, f"--vocab must be at most 256 (tokens are bytes), got {self.vocab}")
        need(self.width % self.heads == 0, f"--width ({self.width}) must be divisible by --heads ({self.heads})")
        need(0 <= self.seed < 2**63, f"--seed must be between 0 and 2**63-1, got {self.seed}")
        need(self.threads >= 0, f"--threads must be >= 0, got {self.threads}")
        for name in ("lr", "eps"):
            need(math.isfinite(getattr(self, name)) and getattr(self, name) > 0, f"--{name} must be > 0")
        for name in ("beta1", "beta2"):
            need(0 <= getattr(self, name) < 1, f"--{name} must be in [0, 1), got {getattr(self, name)}")
        need(math.isfinite(self.weight_decay) and self.weight_decay >= 0, "--weight-decay must be >= 0")
        need(math.isfinite(self.clip) and self.clip >= 0, "--clip must be >= 0 (0 = no clipping)")

    def recipe(self) -> dict:
        """The hyper-parameters as a JSON-ready dict (everything but the execution knobs)."""
        d = dataclasses.asdict(self)
        for key in ("compile", "threads"):
            d.pop(key)
        if d["corpus"] is not None:
            d["corpus"] = str(d["corpus"])  # a Path is welcome too
        return d

    def recorded_steps(self) -> list[int]:
        """Training step stored at each record index: 0, every, 2*every, ..., and always ``steps``."""
        steps = list(range(0, self.steps + 1, self.every))
        if steps[-1] != self.steps:
            steps.append(self.steps)
        return steps


@dataclass
class TrainResult:
    """What a run produced."""

    path: Path  # the recording (absent only if the run was interrupted before it could be saved)
    steps_done: int  # optimizer steps completed
    seconds: float  # wall time of the training loop, including compilation
    final_loss: float  # loss of the last completed step (NaN if none)
    never_seen: list[int] = field(default_factory=list)  # byte ids the corpus never contains
    interrupted: bool = False
    recorded_steps: list[int] = field(default_factory=list)
    compile_seconds: float = 0.0  # part of ``seconds`` spent compiling (0 when eager)
    compiled: bool = False  # whether torch.compile ran the steps (False: eager, by choice or fallback)

    def to_json(self) -> dict:
        return {
            "path": str(self.path),
            "steps_done": self.steps_done,
            "seconds": self.seconds,
            "final_loss": None if math.isnan(self.final_loss) else self.final_loss,
            "never_seen": self.never_seen,
            "interrupted": self.interrupted,
            "recorded_steps": len(self.recorded_steps),
            "compile_seconds": self.compile_seconds,
            "compiled": self.compiled,
        }

    def summary(self) -> str:
        state = f"interrupted after {self.steps_done} steps" if self.interrupted else f"{self.steps_done} steps"
        return (
            f"Trained {state} in {self.seconds:.1f} s (final loss {self.final_loss:.4f}); "
            f"{len(self.recorded_steps)} records written to {self.path}\n"
            f"Bytes never seen in the corpus: {len(self.never_seen)}"
        )


# ---------------------------------------------------------------------------- data


def load_corpus(config: TrainConfig) -> tuple[bytes, Path]:
    """Read the corpus bytes and check every byte is inside the vocabulary."""
    path = Path(config.corpus) if config.corpus is not None else default_corpus_path()
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise BlackholesError(f"no such corpus file: {path}") from None
    except IsADirectoryError:
        raise BlackholesError(f"corpus must be a file, got a directory: {path}") from None
    except OSError as e:
        raise BlackholesError(f"cannot read corpus {path}: {e.strerror or e}") from None
    need = config.context + 1
    if len(data) < need:
        raise BlackholesError(
            f"corpus {path} has {len(data)} bytes; a training window needs context + 1 = {need}"
        )
    bad = np.flatnonzero(np.frombuffer(data, dtype=np.uint8) >= config.vocab)
    if bad.size:
        where = int(bad[0])
        raise BlackholesError(
            f"corpus byte 0x{data[where]:02x} at offset {where} of {path} is outside the vocabulary of "
            f"{config.vocab} ({bad.size} such bytes); use a larger --vocab (256 takes any byte)"
        )
    return data, path


def window_starts(config: TrainConfig, corpus_len: int) -> np.ndarray:
    """Start offsets ``[steps, batch]`` of the random training windows, from the seed."""
    rng = np.random.Generator(np.random.PCG64([config.seed, 0x6A7]))
    return rng.integers(0, corpus_len - config.context, size=(config.steps, config.batch), dtype=np.int64)


def draw_counts(tokens: np.ndarray, starts: np.ndarray, config: TrainConfig) -> tuple[np.ndarray, np.ndarray]:
    """How often each byte was drawn as an input and as a target by these windows."""
    inputs = np.zeros(config.vocab, dtype=np.int64)
    targets = np.zeros(config.vocab, dtype=np.int64)
    offsets = np.arange(config.context + 1)
    flat = starts.reshape(-1)
    for i in range(0, len(flat), 4096):  # bounded memory for long runs
        windows = tokens[flat[i : i + 4096, None] + offsets]
        inputs += np.bincount(windows[:, :-1].ravel(), minlength=config.vocab)
        targets += np.bincount(windows[:, 1:].ravel(), minlength=config.vocab)
    return inputs, targets


# ---------------------------------------------------------------------------- training


def _metadata(config, corpus_path, data, centre, never_seen, counts, steps, *, complete, interrupted_at=None, extra):
    import torch

    meta = {
        "format": "blackholes.recording/1",
        "config": config.recipe(),
        "sigma": config.sigma,
        "seed": config.seed,
        "dtype": config.dtype,
        "vocab": config.vocab,
        "width": config.width,
        "steps": steps,
        "complete": complete,
        "corpus": str(corpus_path),
        "corpus_sha256": hashlib.sha256(data).hexdigest(),
        "corpus_bytes": len(data),
        "never_seen": never_seen,
        "input_counts": counts[0].tolist(),
        "target_counts": counts[1].tolist(),
        "centre": [float(v) for v in centre],
        "torch": torch.__version__,
        **extra,
    }
    if interrupted_at is not None:
        meta["interrupted_at_step"] = interrupted_at
    from blackholes.training.recording import encode_metadata

    return encode_metadata(meta)


def train(
    config: TrainConfig,
    out: str | os.PathLike,
    *,
    progress: bool = True,
    on_step: Callable[[int], None] | None = None,
) -> TrainResult:
    """Train one model and stream its recording to ``out`` (atomically).

    Ctrl-C (``KeyboardInterrupt``) stops the run and saves the steps done so far
    (metadata ``complete: false``, ``interrupted_at_step``); the result then has
    ``interrupted=True``. Any other error leaves no file. ``on_step(step)`` is
    called after every completed step (for tests and custom monitoring).

    >>> train(TrainConfig(sigma=0.0, steps=1000), "run.safetensors").final_loss
    """
    config.validate()
    data, corpus_path = load_corpus(config)
    if Path(out).is_dir():  # found out now, not after the whole run
        raise BlackholesError(f"--out must be a file path, got a directory: {out}")

    import torch

    from blackholes.io.atomic import atomic_path
    from blackholes.training.model import GPT, GPTConfig
    from blackholes.training.recording import RecordingWriter, TensorSpec

    out = Path(out)
    tokens = np.frombuffer(data, dtype=np.uint8).astype(np.int64)
    present = np.bincount(tokens, minlength=config.vocab) > 0
    never_seen = [int(i) for i in np.flatnonzero(~present)]
    starts = window_starts(config, len(tokens))
    steps = config.recorded_steps()
    is_recorded = np.zeros(config.steps + 1, dtype=bool)
    is_recorded[steps] = True

    previous_threads = torch.get_num_threads()
    if config.threads:
        torch.set_num_threads(config.threads)
    try:
        dtype = torch.bfloat16 if config.dtype == "bf16" else torch.float32
        gen = torch.Generator().manual_seed(config.seed)
        model = GPT(GPTConfig(config.vocab, config.context, config.width, config.layers, config.heads, config.mlp_ratio))
        centre = model.init_weights(config.sigma, gen)
        model.to(dtype)  # rounds the rows c + sigma*eps to the training dtype once
        W = model.embedding
        params = list(model.parameters())
        optimizer = torch.optim.AdamW(
            params,
            lr=config.lr,
            betas=(config.beta1, config.beta2),
            eps=config.eps,
            weight_decay=config.weight_decay,
            fused=True,  # one kernel for all parameters; state in the parameters' dtype
        )
        t0 = time.perf_counter()
        step_fn = _compile_step(model, config, progress) if config.compile else None
        compile_seconds = time.perf_counter() - t0
        compiled = step_fn is not None
        step_fn = step_fn or _step

        V, D = config.vocab, config.width
        st = _SAFETENSORS_NAME[config.dtype]
        specs = [
            TensorSpec("embeddings", st, (V, D)),
            TensorSpec("grads", st, (V, D)),
            TensorSpec("logits", st, (V,)),
            TensorSpec("losses", st, ()),
        ]
        if config.optimizer_state:
            specs += [TensorSpec("momentum", st, (V, D)), TensorSpec("variance", st, (V, D))]
        # Records wait in a small ring buffer and go to disk RING at a time.
        ring = {s.name: torch.zeros((_RING, *s.shape), dtype=dtype) for s in specs}
        recorder = _Recorder(ring, steps)
        extra = {"threads": torch.get_num_threads(), "compiled": compiled}
        tokens_t = torch.from_numpy(tokens)
        offsets = torch.arange(config.context + 1)
        pbar = _progress_bar(config.steps, progress)
        done, last_loss, loss_value, interrupted = 0, None, float("nan"), False
        with atomic_path(out) as tmp:
            # The header is final before the first step: a finished file says complete.
            counts = draw_counts(tokens, starts, config)
            metadata = _metadata(config, corpus_path, data, centre, never_seen, counts, steps, complete=True, extra=extra)
            writer = RecordingWriter(tmp, specs, len(steps), metadata)
            recorder.writer = writer
            try:
                # record 0: the initialisation (no gradient, logits or state yet; loss NaN)
                slot = recorder.slot()
                ring["embeddings"][slot].copy_(W.detach())
                ring["losses"][slot] = float("nan")
                recorder.commit()
                adam = None
                for step in range(1, config.steps + 1):
                    if (step - 1) % _WINDOW_BLOCK == 0:  # cut the next block of windows in one go
                        block = torch.from_numpy(starts[step - 1 : step - 1 + _WINDOW_BLOCK])
                        block_windows = tokens_t[block[:, :, None] + offsets]
                    windows = block_windows[(step - 1) % _WINDOW_BLOCK]
                    loss, last_logits = step_fn(model, windows[:, :-1], windows[:, 1:])
                    loss.backward()
                    record = is_recorded[step]
                    if record:
                        slot = recorder.slot()
                        ring["grads"][slot].copy_(W.grad)  # before clipping
                        ring["logits"][slot].copy_(last_logits.detach())
                        ring["losses"][slot] = loss.detach()
                    if config.clip:
                        torch.nn.utils.clip_grad_norm_(params, config.clip, foreach=True)
                    if config.schedule == "linear":
                        for group in optimizer.param_groups:
                            group["lr"] = config.lr * (1 - (step - 1) / config.steps)
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)  # backward then hands over fresh grads: no zeroing, no adding
                    done, last_loss = step, loss.detach()
                    if record:
                        ring["embeddings"][slot].copy_(W.detach())
                        if config.optimizer_state:
                            adam = adam or optimizer.state[W]
                            ring["momentum"][slot].copy_(adam["exp_avg"])
                            ring["variance"][slot].copy_(adam["exp_avg_sq"])
                        recorder.commit()
                    if pbar is not None:
                        pbar.update(1)
                        if recorder.just_flushed:
                            pbar.set_postfix_str(f"loss {float(last_loss):.4f}", refresh=False)
                    if on_step is not None:
                        on_step(step)
                recorder.flush()
            except KeyboardInterrupt:
                # Keep what is complete: flush buffered records, shrink the file to them.
                interrupted = True
                recorder.flush()
                writer.truncate(
                    recorder.records,
                    _metadata(
                        config, corpus_path, data, centre, never_seen,
                        draw_counts(tokens, starts[:done], config), steps[: recorder.records],
                        complete=False, interrupted_at=done, extra=extra,
                    ),
                )
            finally:
                writer.close()
                if pbar is not None:
                    if last_loss is not None:
                        pbar.set_postfix_str(f"loss {float(last_loss):.4f}", refresh=False)
                    pbar.close()
        seconds = time.perf_counter() - t0
        if done:
            loss_value = float(last_loss)
    finally:
        torch.set_num_threads(previous_threads)
    return TrainResult(
        path=out,
        steps_done=done,
        seconds=seconds,
        final_loss=loss_value,
        never_seen=never_seen,
        interrupted=interrupted,
        recorded_steps=steps[: recorder.records],
        compile_seconds=compile_seconds,
        compiled=compiled,
    )


def _compile_step(model, config: TrainConfig, progress: bool):
    """The compiled :func:`_step`, or None (with a warning) where torch.compile cannot run here.

    The compiler is tried on a throw-away copy of the model first, so a machine
    without a working C++ toolchain falls back to eager training before the
    recording's header (which says ``compiled``) is written. The model is an
    argument of the compiled function, not a constant in it, so the real model
    (and every later run of the same shape in this process) reuses that one
    compiled graph instead of piling up recompilations.
    """
    import copy
    import sys
    import warnings

    import torch

    global _COMPILED_STEP
    if progress:
        print("compiling the model (torch.compile; --no-compile skips this) ...", file=sys.stderr, flush=True)
    if _COMPILED_STEP is None:
        _COMPILED_STEP = torch.compile(_step, fullgraph=True, dynamic=False)
    probe = copy.deepcopy(model)
    # Shaped and strided like the loop's inputs and targets (two views of one
    # window): a plain [batch, context] tensor fails dynamo's stride guards at the
    # first real step, which then pays for a second compilation.
    windows = torch.zeros((config.batch, config.context + 1), dtype=torch.long)
    try:
        loss, _ = _COMPILED_STEP(probe, windows[:, :-1], windows[:, 1:])
        loss.backward()
    except Exception as e:  # no compiler, unsupported platform, ...: eager is slower but exact
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        warnings.warn(f"torch.compile is not available here ({reason}); training eagerly", RuntimeWarning,
                      stacklevel=3)
        return None
    return _COMPILED_STEP


_COMPILED_STEP = None  # torch.compile(_step), made on first use


def _step(model, inputs, targets):
    """The forward pass: mean next-token loss and the last position's logits."""
    import torch.nn.functional as F

    logits = model(inputs)
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
    return loss, logits[0, -1]


class _Recorder:
    """Tracks which ring-buffer slot the next record goes to and flushes full rings."""

    def __init__(self, ring, steps):
        self.ring = ring
        self.steps = steps
        self.writer = None
        self.records = 0  # records complete in memory or on disk
        self.flushed = 0  # records on disk
        self.just_flushed = False

    def slot(self) -> int:
        return self.records % _RING

    def commit(self) -> None:
        """The current slot is complete; write the ring out when it is full."""
        self.records += 1
        self.just_flushed = False
        if self.records - self.flushed == _RING:
            self.flush()

    def flush(self) -> None:
        import torch

        n = self.records - self.flushed
        if n <= 0:
            return
        first = self.flushed % _RING
        for name, buf in self.ring.items():
            block = buf[first : first + n]
            if block.dtype == torch.bfloat16:
                block = block.view(torch.int16)  # numpy has no bfloat16: write the raw bits
            self.writer.write(name, self.flushed, block.numpy())
        self.flushed = self.records
        self.just_flushed = True


def _progress_bar(total: int, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="step", dynamic_ncols=True, mininterval=0.25, smoothing=0.1)
