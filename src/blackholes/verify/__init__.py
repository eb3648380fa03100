"""Verification of dead and under-trained tokens by the model itself ("Fishing for Magikarp", Land & Bartolo 2024).

The public entry is :func:`verify`; torch and transformers are imported only when it runs.
"""

from blackholes.verify.result import TokenVerdict, Verification, mask_tensors
from blackholes.verify.run import verify

__all__ = ["TokenVerdict", "Verification", "mask_tensors", "verify"]
