"""Grow a black hole: train a tiny byte-level GPT from one shared point, recording every step.

Every embedding row starts at one centre ``c`` (plus ``sigma`` times its own
noise); the model is trained on a corpus of bytes with AdamW, and the tied
embedding matrix, its gradient, the last position's logits, the loss and Adam's
state for the matrix are streamed to a safetensors *recording* (see
:mod:`blackholes.training.recording` for the format). Bytes the corpus never contains
receive identical gradients and so never leave the shared point: with
``sigma=0`` they form a black hole.

The loop reads like nanoGPT's ``train.py``: batch -> forward/backward -> clip ->
learning rate -> optimizer step -> record. Its parts are separate functions —
:func:`build_model`, :func:`build_optimizer`, :func:`learning_rate`,
:func:`train_step` — so that a batched version (many runs stacked in one model) can
mirror them one by one.

>>> from blackholes.training.loop import TrainConfig, train
>>> result = train(TrainConfig(corpus="gatsby_clean.txt", sigma=0.0, steps=10_000), "run.safetensors")  # doctest: +SKIP
>>> result.never_seen[:3], result.final_loss                                                         # doctest: +SKIP
([0, 1, 2], 1.6...)

Recording conventions: record ``i`` holds training step ``steps[i]``; record 0
is the initialisation (its ``grads``, ``logits``, ``momentum`` and ``variance``
are zeros and its loss and gradient norm NaN). For a step ``s``, ``grads`` is the
gradient of the step's loss before clipping (``grad_norms`` the global norm over
all parameters, before clipping), ``logits`` the model's output at the last
position of the step's (first) sequence, computed *before* the update, and
``embeddings`` / ``momentum`` / ``variance`` the state *after* the update.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np

from blackholes.errors import BlackholesError
from blackholes.training import corpus as corpora
from blackholes.training.config import TrainConfig
from blackholes.training.corpus import Corpus, default_corpus_path
from blackholes.training.precision import PRECISIONS, precision, torch_dtype

if TYPE_CHECKING:
    import torch

__all__ = ["TrainConfig", "TrainResult", "train", "train_step", "build_model", "build_optimizer",
           "learning_rate", "forward_loss", "default_corpus_path", "load_corpus", "window_starts", "draw_counts"]

DTYPES = tuple(PRECISIONS)  # the precision modes (the older name): "bf16", "fp32", "bf16-mixed"
_RING = 64  # records buffered in memory between writes to disk
_WINDOW_BLOCK = 1024  # training windows cut from the corpus at a time


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
    compiled: bool = False  # whether torch.compile ran the steps (numerics == "compiled")
    precision: str = "bf16"
    numerics: str = "eager"  # the recipe's numerics: eager or compiled (see training.config.NUMERICS)
    init: str = "centre"
    stopped_by: str | None = None  # "SIGINT" / "SIGTERM" / "SIGHUP" when a signal stopped the run

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
            "numerics": self.numerics,
            "precision": self.precision,
            "init": self.init,
            "stopped_by": self.stopped_by,
        }

    def summary(self) -> str:
        state = f"interrupted after {self.steps_done} steps" if self.interrupted else f"{self.steps_done} steps"
        return (
            f"Trained {state} in {self.seconds:.1f} s (final loss {self.final_loss:.4f}); "
            f"{len(self.recorded_steps)} records written to {self.path}\n"
            f"Bytes never seen in the corpus: {len(self.never_seen)}"
        )


# ---------------------------------------------------------------------------- data


def prepare_corpus(config: TrainConfig) -> Corpus:
    """Read the corpus and check it holds a window and only bytes inside the vocabulary."""
    corpus = corpora.read_corpus(config.corpus)
    corpora.check_length(corpus, config.context)
    corpora.check_vocabulary(corpus, config.vocab)
    return corpus


def load_corpus(config: TrainConfig) -> tuple[bytes, Path]:
    """The corpus bytes and path, checked as :func:`prepare_corpus` does (kept for older callers)."""
    corpus = prepare_corpus(config)
    return corpus.data, corpus.path


def window_starts(config: TrainConfig, corpus_len: int) -> np.ndarray:
    """Start offsets ``[steps, batch]`` of the random training windows, from the seed."""
    return corpora.window_starts(config.seed, config.steps, config.batch, corpus_len, config.context)


def draw_counts(tokens: np.ndarray, starts: np.ndarray, config: TrainConfig) -> tuple[np.ndarray, np.ndarray]:
    """How often each byte was drawn as an input and as a target by these windows."""
    return corpora.draw_counts(tokens, starts, config.context, config.vocab)


class Batches:
    """The training windows of each step, cut from the corpus ``_WINDOW_BLOCK`` steps at a time."""

    def __init__(self, corpus: Corpus, starts: np.ndarray, context: int):
        import torch

        self.tokens = torch.from_numpy(corpus.tokens.copy())  # uint8: one byte per corpus byte in memory
        self.starts = starts
        self.offsets = torch.arange(context + 1)
        self.block = None

    def get(self, step: int):
        """``(inputs, targets)`` of training step ``step`` (1-based): two views of one window."""
        i = step - 1
        if i % _WINDOW_BLOCK == 0:  # one indexing op per block, not per step
            import torch

            block = torch.from_numpy(self.starts[i : i + _WINDOW_BLOCK])
            self.block = self.tokens[block[:, :, None] + self.offsets].long()
        windows = self.block[i % _WINDOW_BLOCK]
        return windows[:, :-1], windows[:, 1:]


# ---------------------------------------------------------------------------- model, optimizer, one step


def build_model(config: TrainConfig):
    """The GPT of ``config``, initialised from its seed; returns ``(model, centre)``.

    Cast to the precision's parameter dtype: in ``bf16`` that rounds the rows once; in
    ``fp32`` and ``bf16-mixed`` they stay the float32 master weights.
    """
    import torch

    from blackholes.training.model import GPT, GPTConfig

    model = GPT(GPTConfig(config.vocab, config.context, config.width, config.layers, config.heads, config.mlp_ratio))
    centre = model.init_weights(config.sigma, torch.Generator().manual_seed(config.seed), init=config.init)
    model.to(torch_dtype(precision(config.precision).param))
    return model, centre


def build_optimizer(model, config: TrainConfig):
    """AdamW over every parameter; fused (one kernel), its state in the parameters' dtype."""
    import torch

    return torch.optim.AdamW(model.parameters(), lr=config.lr, betas=(config.beta1, config.beta2),
                             eps=config.eps, weight_decay=config.weight_decay, fused=True)


def learning_rate(config: TrainConfig, step: int) -> float:
    """The learning rate of training step ``step`` (1-based): linear decay to 0, or constant.

    >>> learning_rate(TrainConfig(steps=4), 1), learning_rate(TrainConfig(steps=4), 4)
    (0.001, 0.00025)
    """
    if config.schedule == "linear":
        return config.lr * (1 - (step - 1) / config.steps)
    return config.lr


def forward_loss(model, inputs, targets):
    """The forward pass: mean next-token loss and the last position's logits of the first sequence."""
    import torch.nn.functional as F

    logits = model(inputs)
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
    return loss, logits[0, -1]


def forward_loss_bf16_autocast(model, inputs, targets):
    """:func:`forward_loss` under bf16 autocast: fp32 weights, bf16 matmuls (``bf16-mixed``)."""
    import torch

    with torch.autocast("cpu", dtype=torch.bfloat16):
        return forward_loss(model, inputs, targets)


@dataclass
class Trainer:
    """Everything :func:`train_step` needs: the model, its optimizer, the forward function, clipping."""

    model: object
    optimizer: object
    forward: Callable  # forward_loss, its autocast version, or a compiled one
    clip: float
    params: list = field(default_factory=list)

    def __post_init__(self) -> None:
        self.params = self.params or list(self.model.parameters())


@dataclass
class StepOutput:
    loss: torch.Tensor  # 0-d: the step's loss, before the update
    last_logits: torch.Tensor  # [V]: last position's logits of the first sequence, before the update
    grad_norm: torch.Tensor | None  # 0-d: global gradient norm before clipping (None when clip is off)


def train_step(trainer: Trainer, inputs, targets, lr: float, observe: Callable | None = None) -> StepOutput:
    """One optimizer step in nanoGPT's order: forward/backward -> clip -> lr -> step.

    ``observe(loss, last_logits)`` runs between backward and clipping, when the
    gradients are the loss's own (the recorder copies them there).
    """
    import torch

    loss, last_logits = trainer.forward(trainer.model, inputs, targets)
    loss.backward()
    if observe is not None:
        observe(loss, last_logits)
    grad_norm = torch.nn.utils.clip_grad_norm_(trainer.params, trainer.clip, foreach=True) if trainer.clip else None
    for group in trainer.optimizer.param_groups:
        group["lr"] = lr
    trainer.optimizer.step()
    trainer.optimizer.zero_grad(set_to_none=True)  # backward then hands over fresh grads: no zeroing, no adding
    return StepOutput(loss, last_logits, grad_norm)


# ---------------------------------------------------------------------------- train()


def train(
    config: TrainConfig,
    out: str | os.PathLike,
    *,
    progress: bool = True,
    on_step: Callable[[int], None] | None = None,
) -> TrainResult:
    """Train one model and stream its recording to ``out`` (atomically).

    Ctrl-C, SIGTERM and SIGHUP stop the run at the next step boundary and save the
    steps done so far (metadata ``complete: false``, ``interrupted_at_step``,
    ``stopped_by``); the result then has ``interrupted=True``. So does a
    ``KeyboardInterrupt`` raised by ``on_step(step)``, which is called after every
    completed step (for tests and custom monitoring). Any other error leaves no file.
    Everything that can be refused — settings, the corpus, the output path, disk and
    memory for the sizes asked — is refused before torch is imported.

    >>> train(TrainConfig(sigma=0.0, steps=1000), "run.safetensors").final_loss   # doctest: +SKIP
    """
    config.validate()
    corpus = prepare_corpus(config)
    out = _check_output(out, corpus)
    from blackholes.training.limits import check_resources

    check_resources(config, out, corpus.size)
    with intra_op_threads(config.threads) as threads:
        model, centre = build_model(config)
        t0 = time.perf_counter()
        forward = select_forward(model, config, threads, progress)
        compile_seconds = time.perf_counter() - t0
        trainer = Trainer(model, build_optimizer(model, config), forward or eager_forward(config), config.clip)
        extra = {"threads": threads, "compiled": forward is not None}
        run = _record_run(config, corpus, trainer, centre, out, extra, progress, on_step)
        seconds = time.perf_counter() - t0
    return TrainResult(
        path=out, steps_done=run.done, seconds=seconds,
        final_loss=float(run.last_loss) if run.done else float("nan"),
        never_seen=corpora.never_seen(corpus.data, config.vocab), interrupted=run.interrupted,
        recorded_steps=run.recorded_steps, compile_seconds=compile_seconds,
        compiled=forward is not None, precision=config.precision, init=config.init, stopped_by=run.stopped_by,
        numerics=config.numerics,
    )


def _check_output(out, corpus: Corpus) -> Path:
    """The output path, refused now (not after the whole run) when it cannot be the recording."""
    from blackholes.io.paths import check_output_path, same_file

    out = Path(out)
    if out.is_dir():
        raise BlackholesError(f"--out must be a file path, got a directory: {out}")
    if corpus.path is not None and same_file(out, corpus.path):
        raise BlackholesError(f"--out {out} is the corpus (--corpus {corpus.path}); training would overwrite "
                              "its own input: choose another --out")
    return check_output_path(out, inputs=[corpus.path])


@contextlib.contextmanager
def intra_op_threads(threads: int):
    """Run the block with torch's intra-op thread count set to ``threads`` (0: leave it); restored after.

    Yields the count in effect.
    """
    import torch

    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(previous)


def eager_forward(config: TrainConfig) -> Callable:
    return forward_loss_bf16_autocast if precision(config.precision).autocast else forward_loss


# ---------------------------------------------------------------------------- compilation


# torch.compile'd forward functions that passed their probe, keyed by what makes a compiled
# graph valid: the function (i.e. the precision mode) and the thread count in effect — inductor
# bakes that count into its kernels. Shapes are dynamo's own guards. A failed compilation is
# never stored, so a later run in this process tries again.
_COMPILED: dict[tuple[str, int], Callable] = {}


def select_forward(model, config: TrainConfig, threads: int, progress: bool) -> Callable | None:
    """The compiled forward function of a ``numerics="compiled"`` run, or None for an eager one.

    The compiler is tried on a throw-away copy of the model first, so a machine
    without a working C++ toolchain is refused (one line) before anything is
    written: compiled numerics round differently from eager ones, so falling back
    would quietly train another recipe. The model is an argument of the compiled
    function, not a constant in it, so every later run of the same shape in this
    process reuses the one compiled graph.
    """
    if not config.compiled:
        return None
    import copy
    import sys

    import torch

    if progress:
        print("compiling the model (torch.compile, for --numerics compiled) ...", file=sys.stderr, flush=True)
    fn = eager_forward(config)
    key = (fn.__name__, threads)
    compiled = _COMPILED.get(key) or torch.compile(_own_code(fn, f"threads{threads}"), fullgraph=True,
                                                   dynamic=False)
    # Shaped and strided like the loop's inputs and targets (two views of one window):
    # a plain [batch, context] tensor fails dynamo's stride guards at the first real
    # step, which then pays for a second compilation.
    windows = torch.zeros((config.batch, config.context + 1), dtype=torch.long)
    try:
        loss, _ = compiled(copy.deepcopy(model), windows[:, :-1], windows[:, 1:])
        loss.backward()
    except Exception as e:  # no compiler, unsupported platform, ...: this recipe cannot run here
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise BlackholesError(f"--numerics compiled needs torch.compile, which is not available here ({reason}); "
                              "--numerics eager is the reference recipe and needs no compiler") from None
    _COMPILED[key] = compiled
    return compiled


def _own_code(fn: Callable, tag: str) -> Callable:
    """A copy of ``fn`` with a code object of its own: dynamo keeps one cache of compiled graphs
    per code object, so each key of :data:`_COMPILED` gets graphs of its own."""
    code = fn.__code__.replace(co_name=f"{fn.__name__}_{tag}")
    return types.FunctionType(code, fn.__globals__, code.co_name, fn.__defaults__, fn.__closure__)


# ---------------------------------------------------------------------------- the recorded run


@dataclass
class _Run:
    """Where a run stands: steps done, the last loss, how it ended."""

    done: int = 0
    last_loss: object = None
    interrupted: bool = False
    stopped_by: str | None = None
    recorded_steps: list[int] = field(default_factory=list)


def _record_run(config, corpus, trainer, centre, out, extra, progress, on_step) -> _Run:
    """Train for ``config.steps`` steps, streaming the recording to ``out`` through a temporary file.

    The header says ``complete: false`` until the last record is on disk; a stop
    (signal or ``KeyboardInterrupt``) compacts the file to the records done.
    """
    from blackholes.io.atomic import atomic_path
    from blackholes.training.recording import RecordingWriter, recording_specs
    from blackholes.training.signals import StopOnSignal

    starts = window_starts(config, corpus.size)
    steps = config.recorded_steps()
    meta = RunMetadata(config, corpus, centre, starts, steps, extra)
    run = _Run()
    pbar = _progress_bar(config.steps, progress)
    # StopOnSignal outside atomic_path: a signal arriving after the last step is delivered
    # only once the complete file has been renamed into place.
    with StopOnSignal() as stop, atomic_path(out) as tmp:
        writer = RecordingWriter(tmp, recording_specs(config), len(steps), meta.encode(complete=False))
        recorder = StepRecorder(writer, steps, trainer, config)
        try:
            _loop(config, trainer, Batches(corpus, starts, config.context), recorder, run, stop, pbar, on_step)
            recorder.flush()
            if run.interrupted:
                writer.truncate(recorder.records, meta.encode(complete=False, done=run.done, by=run.stopped_by))
            else:
                writer.rewrite_metadata(meta.encode(complete=True))
        except KeyboardInterrupt:
            # Keep what is complete: flush buffered records, shrink the file to them.
            if recorder.records == 0:  # not even the initialisation: nothing worth keeping
                raise
            run.interrupted, run.stopped_by, stop.consumed = True, run.stopped_by or stop.name, True
            recorder.flush()
            writer.truncate(recorder.records, meta.encode(complete=False, done=run.done, by=run.stopped_by))
        finally:
            writer.close()
            _close_progress_bar(pbar, run.last_loss)
        run.recorded_steps = steps[: recorder.records]
    return run


def _loop(config, trainer, batches, recorder, run, stop, pbar, on_step) -> None:
    """The training loop proper: batch -> step (forward/backward, clip, lr, update) -> record."""
    recorder.initial()
    for step in range(1, config.steps + 1):
        inputs, targets = batches.get(step)
        observe = recorder.before_update if recorder.wants(step) else None
        out = train_step(trainer, inputs, targets, learning_rate(config, step), observe)
        run.done, run.last_loss = step, out.loss.detach()
        if observe is not None:
            recorder.after_update(out)
        if pbar is not None:
            pbar.update(1)
            if recorder.just_flushed:
                pbar.set_postfix_str(f"loss {float(run.last_loss):.4f}", refresh=False)
        if on_step is not None:
            on_step(step)
        if stop.requested and step < config.steps:  # at a step boundary: keep the steps done
            run.interrupted, run.stopped_by, stop.consumed = True, stop.name, True
            return


class RunMetadata:
    """The recording's ``__metadata__``: everything but completion is known before the first step."""

    def __init__(self, config, corpus, centre, starts, steps, extra):
        import torch

        self.config, self.corpus, self.starts, self.steps = config, corpus, starts, steps
        self.centre = [float(v) for v in centre]
        self.extra = {**extra, "torch": torch.__version__}
        self.all_counts = draw_counts(corpus.tokens, starts, config)  # of the whole run, counted once

    def encode(self, *, complete: bool, done: int | None = None, by: str | None = None) -> dict[str, str]:
        from blackholes.io.recording import encode_metadata

        c, corpus = self.config, self.corpus
        steps = self.steps if done is None else [s for s in self.steps if s <= done]
        counts = self.all_counts if done is None else draw_counts(corpus.tokens, self.starts[:done], c)
        meta = {
            "format": "blackholes.recording/1", "config": c.recipe(), "sigma": c.sigma, "seed": c.seed,
            "dtype": c.dtype, "precision": c.precision, "init": c.init, "vocab": c.vocab, "width": c.width,
            "steps": steps, "complete": complete, "corpus": str(corpus.path), "corpus_sha256": corpus.sha256(),
            "corpus_bytes": corpus.size, "never_seen": corpora.never_seen(corpus.data, c.vocab),
            "input_counts": counts[0].tolist(), "target_counts": counts[1].tolist(), "centre": self.centre,
            "torch": self.extra["torch"], "threads": self.extra["threads"], "compiled": self.extra["compiled"],
            "numerics": c.numerics,
        }
        if done is not None:
            meta["interrupted_at_step"] = done
            if by is not None:
                meta["stopped_by"] = by
        return encode_metadata(meta)


class StepRecorder:
    """Copies each recorded step's tensors into a small ring buffer and writes full rings to disk.

    Per recorded step: :meth:`before_update` (gradient before clipping, logits, loss),
    then :meth:`after_update` (weights and Adam's state after the update), which
    completes the record.
    """

    def __init__(self, writer, steps: list[int], trainer: Trainer, config: TrainConfig):
        import torch

        from blackholes.training.recording import recording_specs

        dtypes = {"BF16": torch.bfloat16, "F32": torch.float32}
        self.ring = {s.name: torch.zeros((_RING, *s.shape), dtype=dtypes[s.dtype]) for s in recording_specs(config)}
        self.writer, self.trainer, self.W = writer, trainer, trainer.model.embedding
        self.is_recorded = np.zeros(config.steps + 1, dtype=bool)
        self.is_recorded[steps] = True
        self.records = 0  # records complete in memory or on disk
        self.flushed = 0  # records on disk
        self.just_flushed = False

    def wants(self, step: int) -> bool:
        return bool(self.is_recorded[step])

    def initial(self) -> None:
        """Record 0: the initialisation (no gradient, logits or state yet; loss and norm NaN)."""
        slot = self.records % _RING
        self.ring["embeddings"][slot].copy_(self.W.detach())
        self.ring["losses"][slot] = float("nan")
        self.ring["grad_norms"][slot] = float("nan")
        self._commit(slot)

    def before_update(self, loss, last_logits) -> None:
        import torch

        slot = self.records % _RING
        self.ring["grads"][slot].copy_(self.W.grad)  # before clipping
        self.ring["logits"][slot].copy_(last_logits.detach())
        self.ring["losses"][slot] = loss.detach()
        if not self.trainer.clip:  # no clipping computes the norm for us: measure it here, read-only
            grads = [p.grad for p in self.trainer.params if p.grad is not None]
            self.ring["grad_norms"][slot] = torch.nn.utils.get_total_norm(grads, foreach=True)

    def after_update(self, out: StepOutput) -> None:
        slot = self.records % _RING
        self.ring["embeddings"][slot].copy_(self.W.detach())
        if out.grad_norm is not None:
            self.ring["grad_norms"][slot] = out.grad_norm
        if "momentum" in self.ring:
            state = self.trainer.optimizer.state[self.W]
            self.ring["momentum"][slot].copy_(state["exp_avg"])
            self.ring["variance"][slot].copy_(state["exp_avg_sq"])
        self._commit(slot)

    def _commit(self, slot: int) -> None:
        """The slot is complete; write the ring out when it is full."""
        if "embeddings_bf16" in self.ring:  # the copy the next forward pass reads (bf16-mixed)
            self.ring["embeddings_bf16"][slot].copy_(self.ring["embeddings"][slot])
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


def _close_progress_bar(pbar, last_loss) -> None:
    if pbar is not None:
        if last_loss is not None:
            pbar.set_postfix_str(f"loss {float(last_loss):.4f}", refresh=False)
        pbar.close()
