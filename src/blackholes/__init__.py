"""blackholes: find and study black-hole tokens in language models.

A black hole is a set of tokens whose embedding vectors are bit-for-bit
identical. The public API is imported lazily so that ``import blackholes``
stays cheap (no torch, no matplotlib):

>>> import blackholes
>>> result = blackholes.scan("Qwen/Qwen3-4B-Instruct-2507")
>>> result.black_hole_tokens, len(result.groups)
(2100, 13)
"""

from __future__ import annotations

import importlib
import sys
import types

__version__ = "0.1.0"

# public name -> module that defines it (imported on first use)
_LAZY = {
    "scan": "scan",
    "ScanResult": "scan",
    "load_matrix": "tensors",
    "Matrix": "tensors",
    "analyze": "dynamics",
    "DynamicsResult": "dynamics",
    "density_map": "density",
    "DensityMap": "density",
    "pca": "density",
    "reproduce": "report",
    "ReproduceResult": "report",
    "train": "train",
    "TrainConfig": "train",
    "TrainResult": "train",
    "BlackholesError": "errors",
}

__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'blackholes' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{module}", __name__), name)


class _CallableModule(types.ModuleType):
    """A submodule named like its main function (``scan``, ``train``).

    ``import blackholes.scan`` makes the *module* the package's attribute ``scan``,
    shadowing the function; calling the module calls the function, so
    ``blackholes.scan(...)`` works however the package was imported.
    """

    def __call__(self, *args, **kwargs):
        return getattr(self, self.__name__.rpartition(".")[2])(*args, **kwargs)


def _make_callable(module_name: str) -> None:
    sys.modules[module_name].__class__ = _CallableModule
