"""Many runs of one shape trained at once, as one stacked model — bit for bit the runs ``train()`` makes.

K runs that share the model's shape, the precision, the batch size, the step count and
the thread count are trained as one :class:`StackedGPT`: every parameter gets a leading
run dimension (``wte`` is ``[K, vocab, width]``), one forward/backward pass serves all K
runs, and each run keeps its own seed (so its own initialisation), σ, init, corpus and
training windows, learning rate, Adam settings and clipping.

A run trained here is the *same run* as ``blackholes train`` with the same options and
``--numerics eager`` (the default): the same embeddings, bit for bit, at every step. That is by construction, each
part measured (and tested in ``tests/training/test_batched.py``):

* matmuls — ``torch.baddbmm`` / ``torch.bmm`` over the stacked weights compute each run's
  matrix as ``F.linear`` computes it for one run (oneDNN computes each matrix of a batch as
  it computes one matrix), forward and backward in the same orientations; attention's
  matmuls get each matrix in the memory layout one run's ``SelfAttention`` gives it (views of
  the qkv output with one window, contiguous copies with several) — the layout changes
  oneDNN's result (measured: fp32 gradients differed at width 16, context 16);
* elementwise ops, softmax, the embedding lookup (one ``F.embedding`` over the K
  matrices laid end to end) and the residual stream act on each element or row alone;
* LayerNorm and the loss take one weight / one mean per call, so they run once per run
  (``F.layer_norm``, ``F.cross_entropy``): a batched form, ``layer_norm(x) * w + b``,
  rounds differently (measured: ~20,000 of 32,768 bf16 outputs differ);
* clipping and AdamW run per run, through the very functions ``loop.train_step`` calls
  (``clip_grad_norm_``, fused ``AdamW``), on views of the stacked tensors: each run's
  slice of a stacked parameter is a tensor of its own for the optimizer.

Where a kernel could still round differently (a shape or a machine where oneDNN picks
another algorithm for a batch of matrices), :func:`agrees_with_single` detects it by
training the first steps both ways; the sweep then trains those runs one by one.

Only eager numerics are stacked: torch.compile is not used here. Compiled numerics round
differently from eager ones (``benchmarks/numerics_bisect.py``), and compiling the stacked step
did not reproduce the compiled single run in bf16 either (inductor fuses LayerNorm's backward
differently around the stacked weights); a ``numerics="compiled"`` run is trained alone, by
``loop``'s compiled forward, so it too is the run ``train`` makes. See the README.

>>> from blackholes.training.config import TrainConfig
>>> configs = [TrainConfig(steps=3, vocab=16, context=8, width=8, layers=1, heads=1, seed=s, compile=False)
...            for s in (0, 1)]
>>> trainer = build_stacked_trainer(configs)
>>> trainer.model.embedding.shape
torch.Size([2, 16, 8])
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from blackholes.errors import BlackholesError
from blackholes.training.config import TrainConfig
from blackholes.training.precision import precision

# What runs must share to be stacked: the shapes of every tensor, the dtypes, the number of
# steps, and the thread count (which changes roundings). Everything else may differ per run.
from blackholes.training.config import SHAPE_FIELDS  # noqa: E402 (one home, torch-free)
# What AdamW and the learning-rate schedule read: runs equal in all of these share one
# optimizer parameter group (one fused kernel call for all of them).
OPTIMIZER_FIELDS = ("lr", "schedule", "steps", "beta1", "beta2", "eps", "weight_decay")
_WINDOW_BLOCK = 256  # training steps whose windows are cut from the corpora at a time


def batch_key(config: TrainConfig) -> tuple:
    """The settings that runs must share to be trained as one stacked model.

    >>> batch_key(TrainConfig(sigma=0.1)) == batch_key(TrainConfig(sigma=0.0, seed=3, lr=1e-2))
    True
    """
    return tuple(getattr(config, name) for name in SHAPE_FIELDS)


# ---------------------------------------------------------------------------- the stacked model


class StackedGPT(nn.Module):
    """K copies of :class:`~blackholes.training.model.GPT` with their parameters stacked on a
    leading run dimension; ``forward`` computes every run's logits at once.

    Built from K initialised models (so each run's initialisation is exactly its own); the
    parameters keep ``GPT``'s order (``names``), which clipping's total norm depends on.
    """

    def __init__(self, models: list):
        super().__init__()
        if not models:
            raise ValueError("StackedGPT needs at least one model")
        self.config = models[0].config
        self.names = [name for name, _ in models[0].named_parameters()]
        per_model = [dict(m.named_parameters()) for m in models]
        self.stacked = nn.ParameterList(
            nn.Parameter(torch.stack([p[name].detach() for p in per_model])) for name in self.names)
        self._at = {name: i for i, name in enumerate(self.names)}
        context = self.config.context
        self.register_buffer("future", torch.ones(context, context, dtype=torch.bool).triu(1), persistent=False)

    @property
    def runs(self) -> int:
        return self.stacked[0].shape[0]

    @property
    def embedding(self) -> torch.Tensor:
        """The tied embedding matrices, ``[K, vocab, width]`` (a Parameter)."""
        return self.p("wte.weight")

    def p(self, name: str) -> torch.Tensor:
        """The stacked parameter called ``name`` in ``GPT`` (e.g. ``"blocks.0.ln1.weight"``)."""
        return self.stacked[self._at[name]]

    def run_parameters(self) -> list[list[torch.Tensor]]:
        """Per run, its slice of every parameter, in ``GPT``'s order: leaf tensors that share the
        stacked storage, so an optimizer updating them updates the stacked model."""
        return [[p.detach()[k] for p in self.stacked] for k in range(self.runs)]

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """Logits ``[K, B, T, vocab]`` for byte ids ``idx`` ``[K, B, T]`` (run k reads ``idx[k]``)."""
        K, B, T = idx.shape
        cfg = self.config
        if T > cfg.context:
            raise ValueError(f"sequence of {T} tokens is longer than the context ({cfg.context})")
        wte = self.embedding
        # One lookup over the K matrices laid end to end: run k's token v is row k * vocab + v.
        offsets = (torch.arange(K) * cfg.vocab).view(K, 1, 1)
        x = F.embedding(idx + offsets, wte.reshape(K * cfg.vocab, cfg.width)).view(K, B, T, cfg.width)
        x = x + self.p("wpe.weight")[:, None, :T]
        for i in range(cfg.layers):
            x = self._block(x, f"blocks.{i}.")
        h = self._layer_norm(x, "ln_f.")
        return _linear(h, wte, None)

    def _block(self, x: torch.Tensor, at: str) -> torch.Tensor:
        """Pre-LayerNorm block, as ``Block.forward``: x + attn(ln1(x)), then x + mlp(ln2(x))."""
        x = x + self._attention(self._layer_norm(x, at + "ln1."), at + "attn.")
        h = _linear(self._layer_norm(x, at + "ln2."), self.p(at + "mlp.fc.weight"), self.p(at + "mlp.fc.bias"))
        h = F.gelu(h, approximate="tanh")
        return x + _linear(h, self.p(at + "mlp.proj.weight"), self.p(at + "mlp.proj.bias"))

    def _attention(self, x: torch.Tensor, at: str) -> torch.Tensor:
        """Causal self-attention, as ``SelfAttention.forward`` with a run dimension in front."""
        K, B, T, C = x.shape
        qkv = _linear(x, self.p(at + "qkv.weight"), self.p(at + "qkv.bias"))
        future = self.future[:T, :T]
        y = _heads_one_window(qkv, self.config.heads, future) if B == 1 else _heads(qkv, self.config.heads, future)
        return _linear(y, self.p(at + "proj.weight"), self.p(at + "proj.bias"))

    def _layer_norm(self, x: torch.Tensor, at: str) -> torch.Tensor:
        """``F.layer_norm`` once per run: its fused kernel takes one weight per call, and a batched
        rewrite rounds differently. ``unbind``/``stack`` are exact copies (and so are their grads)."""
        w, b = self.p(at + "weight"), self.p(at + "bias")
        C = x.shape[-1]
        return torch.stack([F.layer_norm(xk, (C,), wk, bk) for xk, wk, bk in zip(x.unbind(0), w.unbind(0), b.unbind(0))])


def _heads_one_window(qkv: torch.Tensor, H: int, future: torch.Tensor) -> torch.Tensor:
    """Attention of ``qkv`` ``[K, 1, T, 3C]`` (batch 1), each matmul given the matrices one run's
    ``SelfAttention`` gives it: with one window, ``q @ k^T`` there multiplies *views* of the qkv
    output (rows 3C apart, k^T transposed), and oneDNN's result depends on that layout. So each
    head is sliced from the qkv output the same way (one ``split``, whose gradient is one ``cat``,
    as ``SelfAttention``'s ``split``) and multiplied over the K runs."""
    K, _, T, C3 = qkv.shape
    C = C3 // 3
    heads = qkv.view(K, T, C3).split(C // H, dim=-1)  # q_0 .. q_H-1, k_0 .., v_0 ..: [K, T, C/H] views
    q, k, v = heads[:H], heads[H : 2 * H], heads[2 * H :]
    att = torch.stack([torch.bmm(qh, kh.transpose(1, 2)) for qh, kh in zip(q, k)], dim=1)  # [K, H, T, T]
    att = F.softmax((att * (1.0 / math.sqrt(C // H))).masked_fill(future, float("-inf")), dim=-1)
    y = torch.cat([torch.bmm(a, vh) for a, vh in zip(att.unbind(1), v)], dim=-1)  # [K, T, C]
    return y.view(K, 1, T, C)


def _heads(qkv: torch.Tensor, H: int, future: torch.Tensor) -> torch.Tensor:
    """Attention of ``qkv`` ``[K, B, T, 3C]`` for B > 1, where one run's ``q @ k^T`` copies its
    operands into contiguous matrices (its batch and head dimensions do not merge into a view):
    the 5-D matmuls here copy the same way."""
    K, B, T, C3 = qkv.shape
    C = C3 // 3
    # [K, B, T, C] -> [K, B, heads, T, C/heads]
    q, k, v = (t.reshape(K, B, T, H, C // H).transpose(2, 3) for t in qkv.split(C, dim=3))
    att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.shape[-1]))
    att = att.masked_fill(future, float("-inf"))
    y = F.softmax(att, dim=-1) @ v
    return y.transpose(2, 3).reshape(K, B, T, C)


def _linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``F.linear`` per run: ``x`` ``[K, ..., in]``, ``weight`` ``[K, out, in]``, ``bias`` ``[K, out]``."""
    K, out = x.shape[0], weight.shape[1]
    y = _StackedLinear.apply(x.reshape(K, -1, x.shape[-1]), weight, bias)
    return y.view(*x.shape[:-1], out)


class _StackedLinear(torch.autograd.Function):
    """K linear maps at once, forward *and* backward computed as ``F.linear``'s ``addmm`` computes
    them for one run (``mm_mat1_backward`` / ``mm_mat2_backward`` of autograd):

    * forward: ``baddbmm`` adds the bias inside the matmul, rounding once, as ``addmm``
      (``bmm(...) + bias`` would round twice);
    * input gradient: ``grad @ W``;
    * weight gradient: ``grad^T @ x``, the orientation ``addmm`` uses for its transposed weight
      (``baddbmm``'s own backward computes ``x^T @ grad`` and transposes; the two agreed in every
      shape measured, but a GEMM may sum the other orientation in another order);
    * bias gradient: each run's ``grad.sum(0)`` on its own, as ``sum_to`` reduces one run's grad.

    Under autocast (``bf16-mixed``) the inputs are cast to bf16 first, as autocast casts
    ``addmm``'s, and the maps run in bf16.
    """

    @staticmethod
    @torch.amp.custom_fwd(device_type="cpu", cast_inputs=torch.bfloat16)
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        w = weight.transpose(1, 2)
        return torch.bmm(x, w) if bias is None else torch.baddbmm(bias[:, None, :], x, w)

    @staticmethod
    @torch.amp.custom_bwd(device_type="cpu")
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        grad_x = torch.bmm(grad, weight) if ctx.needs_input_grad[0] else None
        grad_w = torch.bmm(grad.transpose(1, 2), x) if ctx.needs_input_grad[1] else None
        grad_b = torch.stack([g.sum(0) for g in grad.unbind(0)]) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return grad_x, grad_w, grad_b


def stacked_forward_loss(model: StackedGPT, inputs: torch.Tensor, targets: torch.Tensor):
    """Every run's mean next-token loss ``[K]`` and last-position logits of its first sequence ``[K, V]``.

    The loss runs once per run (``F.cross_entropy``, as ``loop.forward_loss``): the mean over
    one run's tokens is a reduction of its own. Summing the K losses for ``backward`` hands
    each run a gradient of exactly 1.
    """
    logits = model(inputs)
    V = logits.shape[-1]
    losses = torch.stack([F.cross_entropy(lk.reshape(-1, V), tk.reshape(-1))
                          for lk, tk in zip(logits.unbind(0), targets.unbind(0))])
    return losses, logits[:, 0, -1]


def stacked_forward_loss_bf16_autocast(model: StackedGPT, inputs: torch.Tensor, targets: torch.Tensor):
    """:func:`stacked_forward_loss` under bf16 autocast (``bf16-mixed``), as ``loop.forward_loss_bf16_autocast``."""
    with torch.autocast("cpu", dtype=torch.bfloat16):
        return stacked_forward_loss(model, inputs, targets)


# ---------------------------------------------------------------------------- model, optimizer, one step


def build_stacked(configs: list[TrainConfig]) -> tuple[StackedGPT, list[torch.Tensor]]:
    """The stacked model of ``configs`` (one shape, see :data:`SHAPE_FIELDS`), each run initialised
    by ``loop.build_model`` from its own seed, σ and init; returns ``(model, centres)``."""
    from blackholes.training.loop import build_model

    check_stackable(configs)
    built = [build_model(c) for c in configs]
    return StackedGPT([m for m, _ in built]), [centre for _, centre in built]


def check_stackable(configs: list[TrainConfig]) -> None:
    """Refuse runs that cannot share one stacked model (one line naming the first difference).

    >>> check_stackable([TrainConfig(width=64), TrainConfig(width=32)])
    Traceback (most recent call last):
    ...
    blackholes.errors.BlackholesError: runs of different width (64 and 32) cannot be trained as one stacked model
    >>> check_stackable([TrainConfig(numerics="compiled")])
    Traceback (most recent call last):
    ...
    blackholes.errors.BlackholesError: runs with --numerics compiled are trained alone, not as one stacked model
    """
    if not configs:
        raise BlackholesError("no runs to train")
    compiled = [c for c in configs if c.compiled]
    if compiled:  # their rounding is torch.compile's, which the stacked model does not reproduce
        raise BlackholesError("runs with --numerics compiled are trained alone, not as one stacked model")
    first = configs[0]
    for c in configs[1:]:
        for name in SHAPE_FIELDS:
            if getattr(c, name) != getattr(first, name):
                raise BlackholesError(f"runs of different {name} ({getattr(first, name)} and {getattr(c, name)}) "
                                      "cannot be trained as one stacked model")


def build_stacked_optimizer(model: StackedGPT, configs: list[TrainConfig]):
    """Fused AdamW over each run's parameter slices, as ``loop.build_optimizer`` builds it for one run.

    Runs whose Adam settings and learning-rate schedule agree share a parameter group (one
    fused kernel call); the kernel updates each tensor on its own, so sharing changes no bit.
    Returns ``(optimizer, views, group_of_run)``.
    """
    views = model.run_parameters()
    keys: dict[tuple, int] = {}
    group_of_run = []
    members: list[list[int]] = []
    for k, c in enumerate(configs):
        key = tuple(getattr(c, name) for name in OPTIMIZER_FIELDS)
        if key not in keys:
            keys[key] = len(members)
            members.append([])
        members[keys[key]].append(k)
        group_of_run.append(keys[key])
    groups = []
    for runs in members:
        c = configs[runs[0]]
        groups.append({"params": [p for k in runs for p in views[k]], "lr": c.lr, "betas": (c.beta1, c.beta2),
                       "eps": c.eps, "weight_decay": c.weight_decay})
    return torch.optim.AdamW(groups, fused=True), views, group_of_run


@dataclass
class StackedTrainer:
    """Everything :func:`stacked_train_step` needs (the batched ``loop.Trainer``)."""

    model: StackedGPT
    optimizer: object
    forward: Callable  # stacked_forward_loss or its autocast version
    configs: list[TrainConfig]
    views: list[list[torch.Tensor]]  # per run, its parameter slices (what clipping and AdamW see)
    group_of_run: list[int]  # the optimizer parameter group of each run

    def share_grads(self) -> None:
        """Hand each run's slice of the stacked gradients to its parameter views."""
        for stacked, *slices in zip(self.model.stacked, *self.views):
            grads = stacked.grad.unbind(0)
            for view, grad in zip(slices, grads):
                view.grad = grad

    def clear_grads(self) -> None:
        """As ``zero_grad(set_to_none=True)``: backward then hands over fresh gradients."""
        self.model.zero_grad(set_to_none=True)
        for params in self.views:
            for view in params:
                view.grad = None

    def set_learning_rates(self, step: int) -> None:
        """Each parameter group's learning rate for training step ``step`` (``loop.learning_rate``)."""
        from blackholes.training.loop import learning_rate

        first = {}
        for k, g in enumerate(self.group_of_run):
            first.setdefault(g, k)
        for g, group in enumerate(self.optimizer.param_groups):
            group["lr"] = learning_rate(self.configs[first[g]], step)


def build_stacked_trainer(configs: list[TrainConfig]) -> StackedTrainer:
    """The stacked model and optimizer of ``configs``, ready for :func:`stacked_train_step`.

    ``configs`` must be validated; they must agree on :data:`SHAPE_FIELDS`.
    """
    model, _ = build_stacked(configs)
    return trainer_for(model, configs)


def trainer_for(model: StackedGPT, configs: list[TrainConfig]) -> StackedTrainer:
    optimizer, views, group_of_run = build_stacked_optimizer(model, configs)
    autocast = precision(configs[0].precision).autocast
    forward = stacked_forward_loss_bf16_autocast if autocast else stacked_forward_loss
    return StackedTrainer(model, optimizer, forward, list(configs), views, group_of_run)


@dataclass
class StackedStepOutput:
    losses: torch.Tensor  # [K]: each run's loss, before the update
    last_logits: torch.Tensor  # [K, V]: last position's logits of each run's first sequence, before the update
    grad_norms: list = field(default_factory=list)  # per run: global gradient norm before clipping (None: no clip)


def stacked_train_step(trainer: StackedTrainer, inputs, targets, step: int,
                       observe: Callable | None = None) -> StackedStepOutput:
    """One optimizer step of every run, in ``loop.train_step``'s order: forward/backward -> clip -> lr -> step.

    ``inputs``/``targets``: ``[K, B, T]``. ``observe(losses, last_logits)`` runs between backward
    and clipping, when each run's parameter views hold its own unclipped gradients.
    """
    losses, last_logits = trainer.forward(trainer.model, inputs, targets)
    losses.sum().backward()
    trainer.share_grads()
    if observe is not None:
        observe(losses, last_logits)
    norms = [torch.nn.utils.clip_grad_norm_(params, c.clip, foreach=True) if c.clip else None
             for params, c in zip(trainer.views, trainer.configs)]
    trainer.set_learning_rates(step)
    trainer.optimizer.step()
    trainer.clear_grads()
    return StackedStepOutput(losses, last_logits, norms)


# ---------------------------------------------------------------------------- data


class StackedBatches:
    """Each run's training windows, from its own corpus and its own seed, stacked ``[K, B, T + 1]``.

    ``starts[k]`` is run k's ``[steps, batch]`` window offsets (``corpus.window_starts``), so run k
    reads exactly the windows ``train()`` would draw for it.

    >>> tokens = [np.arange(20, dtype=np.uint8), np.arange(20, dtype=np.uint8)[::-1].copy()]
    >>> batches = StackedBatches(tokens, [np.array([[0], [5]]), np.array([[1], [2]])], context=3)
    >>> inputs, targets = batches.get(2)
    >>> inputs[:, 0].tolist(), targets[:, 0].tolist()
    ([[5, 6, 7], [17, 16, 15]], [[6, 7, 8], [16, 15, 14]])
    """

    def __init__(self, tokens: list[np.ndarray], starts: list[np.ndarray], context: int):
        self.tokens, self.starts = tokens, starts
        self.offsets = np.arange(context + 1)
        self.block, self.first = None, -1

    def get(self, step: int):
        """``(inputs, targets)`` ``[K, B, T]`` of training step ``step`` (1-based)."""
        i = step - 1
        first = i - i % _WINDOW_BLOCK
        if first != self.first:  # one gather per run and block of steps, not per step
            cut = [t[s[first : first + _WINDOW_BLOCK, :, None] + self.offsets] for t, s in zip(self.tokens, self.starts)]
            self.block, self.first = torch.from_numpy(np.stack(cut, axis=1)).long(), first  # [steps, K, B, T + 1]
        windows = self.block[i - first]
        return windows[..., :-1], windows[..., 1:]


# ---------------------------------------------------------------------------- the check against one run


def agrees_with_single(configs: list[TrainConfig], tokens: list[np.ndarray], starts: list[np.ndarray],
                       steps: int = 2) -> bool:
    """Whether the stacked step reproduces the single-run step here, for this shape: the first
    ``steps`` steps are trained both ways (all K runs stacked; the first and the last run alone,
    with ``loop.train_step``) and every loss and embedding compared bit for bit.

    A kernel that rounds a batch of matrices differently from one matrix shows at the first
    step; a passing check is evidence for the rest of the run, not a proof (the tests compare
    whole short runs). Run inside the runs' thread count (``loop.intra_op_threads``).
    """
    from blackholes.training import loop

    steps = min(steps, configs[0].steps)
    stacked = build_stacked_trainer(configs)
    batches = StackedBatches(tokens, starts, configs[0].context)
    picks = sorted({0, len(configs) - 1})
    singles = {}
    for k in picks:
        model, _ = loop.build_model(configs[k])
        singles[k] = loop.Trainer(model, loop.build_optimizer(model, configs[k]), loop.eager_forward(configs[k]),
                                  configs[k].clip)
    for step in range(1, steps + 1):
        inputs, targets = batches.get(step)
        out = stacked_train_step(stacked, inputs, targets, step)
        for k, single in singles.items():
            one = loop.train_step(single, inputs[k], targets[k], loop.learning_rate(configs[k], step))
            if not (_same_bits(one.loss, out.losses[k]) and
                    _same_bits(single.model.embedding, stacked.model.embedding[k])):
                return False
    return True


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    a, b = a.detach(), b.detach()
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    view = {2: torch.int16, 4: torch.int32, 8: torch.int64}[a.element_size()]
    return bool(torch.equal(a.contiguous().view(view), b.contiguous().view(view)))
