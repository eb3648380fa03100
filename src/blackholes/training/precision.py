"""Precision modes: which dtype the weights, gradients and Adam's state live in, and which the matmuls use.

Three modes, as the research used them:

* ``bf16`` — parameters, gradients and Adam's state all bfloat16 (the original's
  setting): every update is rounded to bf16, so a small update can vanish;
* ``fp32`` — everything float32;
* ``bf16-mixed`` — the common mixed-precision recipe: fp32 master weights and fp32
  Adam state, forward and backward under bf16 autocast (matmuls read a bf16 copy of
  the weights; the embedding lookup, LayerNorm and the loss stay fp32). The
  recording keeps the master weights as ``embeddings`` and the rounded copy the
  output projection reads as ``embeddings_bf16``.

Nothing here imports torch: dtypes are named, and :func:`torch_dtype` maps a name
when torch is already loaded.

>>> p = precision("bf16-mixed")
>>> p.param, p.compute, p.autocast, p.record_dtype
('fp32', 'bf16', True, 'F32')
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from blackholes.errors import BlackholesError


@dataclass(frozen=True)
class Precision:
    """One precision mode."""

    name: str  # "bf16" | "fp32" | "bf16-mixed"
    param: str  # dtype of the parameters, their gradients and Adam's state: "bf16" | "fp32"
    compute: str  # dtype the forward/backward matmuls run in

    @property
    def autocast(self) -> bool:
        """Whether the forward pass runs under autocast (compute dtype != parameter dtype)."""
        return self.compute != self.param

    @property
    def record_dtype(self) -> str:
        """The safetensors dtype of the recorded tensors (that of the parameters)."""
        return _SAFETENSORS[self.param]

    def to_json(self) -> dict:
        return {**asdict(self), "autocast": self.autocast, "record_dtype": self.record_dtype}


PRECISIONS = {
    "bf16": Precision("bf16", param="bf16", compute="bf16"),
    "fp32": Precision("fp32", param="fp32", compute="fp32"),
    "bf16-mixed": Precision("bf16-mixed", param="fp32", compute="bf16"),
}
_SAFETENSORS = {"bf16": "BF16", "fp32": "F32"}


def precision(name: str) -> Precision:
    """The mode called ``name``; an unknown name is one line listing the modes.

    >>> precision("fp8")
    Traceback (most recent call last):
    ...
    blackholes.errors.BlackholesError: --precision must be one of bf16, fp32, bf16-mixed, got 'fp8'
    """
    try:
        return PRECISIONS[name]
    except (KeyError, TypeError):
        raise BlackholesError(f"--precision must be one of {', '.join(PRECISIONS)}, got {name!r}") from None


def torch_dtype(name: str):
    """``torch.bfloat16`` / ``torch.float32`` for ``"bf16"`` / ``"fp32"`` (imports torch).

    >>> torch_dtype("bf16")
    torch.bfloat16
    """
    import torch

    return {"bf16": torch.bfloat16, "fp32": torch.float32}[name]
