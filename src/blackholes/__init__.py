"""blackholes: find and study black-hole tokens in language models.

A black hole is a set of tokens whose embedding vectors are bit-for-bit
identical. The public API is imported lazily so that ``import blackholes``
stays cheap (no torch, no matplotlib):

>>> import blackholes
>>> result = blackholes.scan("org/tiny")   # for Qwen/Qwen3-4B-Instruct-2507: (2100, 13)
>>> result.black_hole_tokens, len(result.groups)
(12, 2)
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

# public name -> module that defines it (imported on first use). No submodule shares
# a public function's name, so ``blackholes.scan`` is always the function itself.
_LAZY = {
    "scan": "analysis.groups",
    "ScanResult": "analysis.groups",
    "load_matrix": "sources",
    "Matrix": "sources",
    "analyze": "analysis.dynamics",
    "DynamicsResult": "analysis.dynamics_result",
    "density_map": "analysis.density",
    "DensityMap": "analysis.density",
    "pca": "analysis.pca",
    "reproduce": "pipelines.reproduce",
    "ReproduceResult": "pipelines.reproduce",
    "train": "training.loop",
    "TrainConfig": "training.loop",
    "TrainResult": "training.loop",
    "scan_both": "analysis.groups",
    "ModelScan": "analysis.groups",
    "census": "pipelines.census",
    "CensusResult": "pipelines.census",
    "Recording": "io.recording",
    "sweep": "pipelines.sweep",
    "SweepResult": "pipelines.sweep",
    "history": "pipelines.history",
    "HistoryResult": "pipelines.history",
    "BlackholesError": "errors",
    "export": "pipelines.export",
    "ExportResult": "pipelines.export",
    "repair": "pipelines.repair",
    "RepairResult": "pipelines.repair",
    "Verification": "verify",  # the function is blackholes.verify.verify: the subpackage has its name
}

if TYPE_CHECKING:  # what an editor and a type checker see: every name of _LAZY, from its module
    from blackholes.analysis.density import density_map, DensityMap
    from blackholes.analysis.dynamics import analyze
    from blackholes.analysis.dynamics_result import DynamicsResult
    from blackholes.analysis.groups import ModelScan, scan, scan_both, ScanResult
    from blackholes.analysis.pca import pca
    from blackholes.errors import BlackholesError
    from blackholes.pipelines.census import census, CensusResult
    from blackholes.pipelines.export import export, ExportResult
    from blackholes.pipelines.history import history, HistoryResult
    from blackholes.pipelines.repair import repair, RepairResult
    from blackholes.pipelines.reproduce import reproduce, ReproduceResult
    from blackholes.pipelines.sweep import sweep, SweepResult
    from blackholes.sources import load_matrix, Matrix
    from blackholes.training.loop import train, TrainConfig, TrainResult
    from blackholes.io.recording import Recording
    from blackholes.verify import Verification

__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'blackholes' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{module}", __name__), name)


def __dir__():
    return __all__
