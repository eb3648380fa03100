"""Which operations make compiled training round differently from eager training: a bisection.

Two parts, both on this CPU, one intra-op thread (the recipe's default):

1. **Per operation.** Each piece of the model (LayerNorm, tanh-GELU, the attention's scale and
   mask, softmax, a biased linear map, the residual add, the embedding lookup, cross-entropy,
   then whole attention, MLP, block and model) is run eagerly and compiled, forward and
   backward, on the same inputs and the same upstream gradient; every output and gradient is
   compared bit for bit and the differing elements counted.
2. **Whole steps.** ``loop.train_step`` runs N steps of one recipe with the eager forward and
   with each compiled variant; the first step whose loss or embedding matrix differs is
   reported, with how many parameter-gradient elements differ at step 1.

Compiled variants: ``inductor`` (torch.compile as ``train`` used it), ``emulate``
(``emulate_precision_casts``: a rounding to bf16 after every fused op, as eager rounds),
``fallback`` (emulate, and the ops named by ``--fallback`` removed from inductor's
decomposition table, so they run as eager's own kernels inside the compiled graph), and
``exact`` (fallback, and inductor's pattern passes off: one of them turns ``mm`` + ``add`` into
one ``addmm``, which rounds the tied embedding's two gradient terms once instead of twice).

    python benchmarks/numerics_bisect.py                      # bf16, both parts
    python benchmarks/numerics_bisect.py --precision bf16-mixed --steps 20 --part steps
    python benchmarks/numerics_bisect.py --json bisect.json
    python benchmarks/numerics_bisect.py --part speed --variants inductor,exact --steps 200

Prints one table per part (and writes them as JSON with ``--json``). The optimizer (fused
AdamW) and clipping run eagerly in every variant: ``train`` never compiles them.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
import time

import torch
import torch.nn.functional as F

from blackholes.training import loop
from blackholes.training.config import TrainConfig
from blackholes.training.model import MLP, Block, GPTConfig, SelfAttention
from blackholes.training.precision import precision as precision_of
from blackholes.training.precision import torch_dtype

VARIANTS = ("inductor", "emulate", "fallback", "exact")
# ops whose eager kernel the `fallback` variant keeps (the reductions and transcendental ops)
DEFAULT_FALLBACK = ("native_layer_norm", "native_layer_norm_backward", "_softmax", "_softmax_backward_data",
                    "_log_softmax", "_log_softmax_backward_data", "nll_loss_forward", "nll_loss_backward",
                    "gelu", "gelu_backward", "embedding_dense_backward")


# ---------------------------------------------------------------------------- compiling


def compiler(variant: str, fallback: tuple[str, ...]):
    """``fn -> compiled fn`` for one variant (each call compiles a fresh graph)."""
    if variant == "inductor":
        return lambda fn: torch.compile(fn, fullgraph=True, dynamic=False)
    if variant == "emulate":
        return lambda fn: torch.compile(fn, fullgraph=True, dynamic=False,
                                        options={"emulate_precision_casts": True})
    if variant == "fallback":
        return lambda fn: torch.compile(fn, fullgraph=True, dynamic=False, backend=_fallback_backend(fallback))
    if variant == "exact":
        return lambda fn: torch.compile(fn, fullgraph=True, dynamic=False,
                                        backend=_fallback_backend(fallback, no_patterns=True))
    raise SystemExit(f"unknown variant {variant!r}; choose from {', '.join(VARIANTS)}")


def _fallback_backend(names: tuple[str, ...], no_patterns: bool = False):
    """Inductor with emulated casts, the named ops left undecomposed: inductor has no lowering of
    its own for them, so (``implicit_fallbacks``) it calls eager's kernel."""
    from torch._inductor import config as inductor_config
    from torch._inductor.compile_fx import compile_fx
    from torch._inductor.decomposition import select_decomp_table

    packets = {getattr(torch.ops.aten, n) for n in names}
    table = {op: fn for op, fn in select_decomp_table().items() if getattr(op, "overloadpacket", None) not in packets}

    def backend(gm, example_inputs):
        # The caches' keys do not include a custom decomposition table: a graph compiled by another
        # variant would be handed back. So this variant compiles afresh (its backward too, see uncached).
        with inductor_config.patch(emulate_precision_casts=True, pattern_matcher=not no_patterns), uncached():
            return compile_fx(gm, example_inputs, decompositions=table)

    return backend


def uncached():
    """Inductor's FX-graph cache and AOT autograd's cache off (a context manager)."""
    import contextlib

    from torch._functorch import config as functorch_config
    from torch._inductor import config as inductor_config

    stack = contextlib.ExitStack()
    stack.enter_context(inductor_config.patch(fx_graph_cache=False))
    stack.enter_context(functorch_config.patch(enable_autograd_cache=False))
    return stack


def _fresh(fn):
    """A copy of ``fn`` with its own code object, so dynamo caches its graphs apart from the others."""
    import types

    code = fn.__code__.replace(co_name=f"{fn.__name__}_{time.perf_counter_ns()}")
    return types.FunctionType(code, fn.__globals__, code.co_name, fn.__defaults__, fn.__closure__)


def differing(a: torch.Tensor, b: torch.Tensor) -> int:
    """Elements whose bits differ (NaNs with equal bits count as equal)."""
    a, b = a.detach().contiguous(), b.detach().contiguous()
    view = {2: torch.int16, 4: torch.int32, 8: torch.int64}[a.element_size()]
    return int((a.view(view) != b.view(view)).sum())


# ---------------------------------------------------------------------------- part 1: per operation


def pieces(cfg: TrainConfig, dtype: torch.dtype) -> dict:
    """name -> (function, its tensor arguments): each a piece of the model at the recipe's shape."""
    g = torch.Generator().manual_seed(0)
    B, T, C, V = cfg.batch, cfg.context, cfg.width, cfg.vocab
    gpt = GPTConfig(cfg.vocab, cfg.context, cfg.width, cfg.layers, cfg.heads, cfg.mlp_ratio)

    def r(*shape, scale=1.0, shift=0.0):
        return (torch.randn(*shape, generator=g) * scale + shift).to(dtype).requires_grad_()

    future = torch.ones(T, T, dtype=torch.bool).triu(1)
    att = r(B, cfg.heads, T, T, scale=0.05)
    idx = torch.randint(0, V, (B, T), generator=g)
    modules = {"attention": SelfAttention(gpt), "mlp": MLP(gpt), "block": Block(gpt)}
    for m in modules.values():
        for p in m.parameters():
            p.data = (torch.randn(p.shape, generator=g) * 0.02).to(dtype)
        m.to(dtype)
    model, _ = loop.build_model(cfg)
    return {
        "layer_norm": (lambda x, w, b: F.layer_norm(x, (C,), w, b), [r(B, T, C), r(C, scale=0.1, shift=1.0), r(C, scale=0.1)]),
        "gelu_tanh": (lambda x: F.gelu(x, approximate="tanh"), [r(B, T, 4 * C)]),
        "scale_mask": (lambda a: (a * (1.0 / math.sqrt(C // cfg.heads))).masked_fill(future, float("-inf")), [att]),
        "softmax": (lambda a: F.softmax(a.masked_fill(future, float("-inf")), dim=-1), [att]),
        "linear_bias": (lambda x, w, b: F.linear(x, w, b), [r(B, T, C), r(3 * C, C, scale=0.02), r(3 * C, scale=0.02)]),
        "residual_add": (lambda x, y: x + y, [r(B, T, C), r(B, T, C, scale=0.1)]),
        "embedding": (lambda w, p: F.embedding(idx, w) + p[:T], [r(V, C, scale=0.02), r(T, C, scale=0.02)]),
        "cross_entropy": (lambda lg: F.cross_entropy(lg.reshape(-1, V), idx.reshape(-1)), [r(B, T, V)]),
        "attention": (lambda x: modules["attention"](x), [r(B, T, C)]),
        "mlp": (lambda x: modules["mlp"](x), [r(B, T, C)]),
        "block": (lambda x: modules["block"](x), [r(B, T, C)]),
        "model+loss": (lambda: loop.forward_loss(model, idx, torch.roll(idx, 1, 1))[0], []),
        "_params": {"attention": modules["attention"], "mlp": modules["mlp"], "block": modules["block"],
                    "model+loss": model},
    }


def run_piece(fn, args, params, seed: int = 1):
    """Forward and backward of ``fn(*args)`` against one fixed upstream gradient: the output and
    the gradients of its inputs and of ``params``, in order."""
    for t in [*args, *params]:
        t.grad = None
    out = fn(*args)
    upstream = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed)).to(out.dtype)
    out.backward(upstream)
    return [out.detach().clone(), *[t.grad.clone() for t in [*args, *params]]]


def per_op(cfg: TrainConfig, variants, fallback, only=None) -> list[dict]:
    """Part 1: one row per (piece, variant): differing elements of the output and of all gradients."""
    dtype = torch_dtype(precision_of(cfg.precision).compute)
    table = pieces(cfg, dtype)
    params_of = table.pop("_params")
    rows = []
    for name, (fn, args) in table.items():
        if only and name not in only:
            continue
        params = list(params_of[name].parameters()) if name in params_of else []
        eager = run_piece(fn, args, params)
        row = {"piece": name, "elements": sum(t.numel() for t in eager)}
        for variant in variants:
            torch._dynamo.reset()
            try:
                with uncached() if variant in ("fallback", "exact") else contextlib.nullcontext():
                    got = run_piece(compiler(variant, fallback)(_fresh(fn)), args, params)
                row[variant] = {"output": differing(eager[0], got[0]),
                                "grads": sum(differing(a, b) for a, b in zip(eager[1:], got[1:]))}
            except Exception as e:  # a variant inductor cannot build is a finding too
                row[variant] = {"error": (str(e).splitlines() or [type(e).__name__])[0][:120]}
        rows.append(row)
        print(_piece_line(row, variants), flush=True)
    return rows


def _piece_line(row: dict, variants) -> str:
    cells = []
    for v in variants:
        r = row[v]
        cells.append(f"{v}: {r['error']}" if "error" in r else f"{v}: out {r['output']:>6} grads {r['grads']:>6}")
    return f"{row['piece']:<14} of {row['elements']:>7} | " + " | ".join(cells)


# ---------------------------------------------------------------------------- part 2: whole steps


def whole_steps(cfg: TrainConfig, variants, fallback) -> list[dict]:
    """Part 2: N steps per variant against eager; first differing step of loss and embeddings."""
    corpus = loop.prepare_corpus(cfg)
    starts = loop.window_starts(cfg, corpus.size)
    reference = _trajectory(cfg, corpus, starts, None)
    rows = []
    for variant in variants:
        torch._dynamo.reset()
        t0 = time.perf_counter()
        with uncached() if variant in ("fallback", "exact") else contextlib.nullcontext():
            got = _trajectory(cfg, corpus, starts, compiler(variant, fallback)(_fresh(loop.eager_forward(cfg))))
        row = {"variant": variant, "steps": cfg.steps, "seconds": round(time.perf_counter() - t0, 1),
               "first_loss_difference": _first(reference["loss"], got["loss"]),
               "first_embedding_difference": _first(reference["embedding"], got["embedding"]),
               "step1_grad_elements_differing": sum(differing(a, b) for a, b in zip(reference["grads"], got["grads"])),
               "step1_grad_elements": sum(g.numel() for g in got["grads"]),
               "final_embedding_elements_differing": differing(reference["embedding"][-1], got["embedding"][-1])}
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def speed(cfg: TrainConfig, variants, fallback, rounds: int = 3) -> list[dict]:
    """Part 3: milliseconds per training step (no recording), eager against each compiled variant,
    after compiling and a warm-up, in interleaved rounds of ``cfg.steps`` steps (best round kept)."""
    corpus = loop.prepare_corpus(cfg)
    starts = loop.window_starts(cfg, corpus.size)
    contenders = {"eager": None}
    for variant in variants:
        with uncached() if variant in ("fallback", "exact") else contextlib.nullcontext():
            contenders[variant] = compiler(variant, fallback)(_fresh(loop.eager_forward(cfg)))
            _trajectory(cfg, corpus, starts, contenders[variant], steps=2)  # compiles forward and backward
    best = {name: math.inf for name in contenders}
    for _ in range(rounds):
        for name, forward in contenders.items():
            t0 = time.perf_counter()
            _trajectory(cfg, corpus, starts, forward, keep=False)
            best[name] = min(best[name], (time.perf_counter() - t0) / cfg.steps * 1e3)
    rows = [{"contender": name, "ms_per_step": round(ms, 3), "vs_eager": round(ms / best["eager"], 3)}
            for name, ms in best.items()]
    for row in rows:
        print(json.dumps(row), flush=True)
    return rows


def _trajectory(cfg, corpus, starts, forward, steps: int | None = None, keep: bool = True) -> dict:
    model, _ = loop.build_model(cfg)
    trainer = loop.Trainer(model, loop.build_optimizer(model, cfg), forward or loop.eager_forward(cfg), cfg.clip)
    batches = loop.Batches(corpus, starts, cfg.context)
    out = {"loss": [], "embedding": [], "grads": []}
    for step in range(1, (steps or cfg.steps) + 1):
        inputs, targets = batches.get(step)

        def observe(loss, logits, step=step):
            if step == 1:
                out["grads"] = [p.grad.clone() for p in trainer.params]

        res = loop.train_step(trainer, inputs, targets, loop.learning_rate(cfg, step), observe if keep else None)
        if keep:
            out["loss"].append(res.loss.detach().clone())
            out["embedding"].append(model.embedding.detach().clone())
    return out


def _first(a: list, b: list) -> int | None:
    for i, (x, y) in enumerate(zip(a, b)):
        if differing(x, y):
            return i + 1
    return None


# ---------------------------------------------------------------------------- main


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--precision", default="bf16", choices=("bf16", "fp32", "bf16-mixed"))
    p.add_argument("--steps", type=int, default=10, help="whole-step part: steps per variant")
    p.add_argument("--sigma", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--corpus", default=None)
    p.add_argument("--context", type=int, default=128)
    p.add_argument("--part", choices=("ops", "steps", "both", "speed"), default="both",
                   help="speed: ms per step of eager and each variant (--steps steps a round, 3 rounds)")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--pieces", default=None, help="per-operation part: only these pieces (comma-separated)")
    p.add_argument("--fallback", default=",".join(DEFAULT_FALLBACK), help="aten ops the fallback variant keeps eager")
    p.add_argument("--json", default=None, help="also write the tables here")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    cfg = TrainConfig(precision=a.precision, steps=a.steps, sigma=a.sigma, seed=a.seed, corpus=a.corpus,
                      context=a.context)
    cfg.validate()
    variants = [v for v in a.variants.split(",") if v]
    fallback = tuple(n for n in a.fallback.split(",") if n)
    result = {"torch": torch.__version__, "precision": a.precision, "context": a.context, "fallback": fallback}
    if a.part in ("ops", "both"):
        print(f"per operation ({a.precision}): elements whose bits differ from eager", flush=True)
        result["ops"] = per_op(cfg, variants, fallback, a.pieces.split(",") if a.pieces else None)
    if a.part in ("steps", "both"):
        print(f"whole steps ({a.precision}, {a.steps} steps, sigma {a.sigma:g}, seed {a.seed})", flush=True)
        result["steps"] = whole_steps(cfg, variants, fallback)
    if a.part == "speed":
        print(f"speed ({a.precision}, {a.steps} steps a round, best of 3)", flush=True)
        result["speed"] = speed(cfg, variants, fallback)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
