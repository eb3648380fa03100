"""The inputs of a coarsening sweep: the centre row, the target model's holes, the σ and seed grids.

:func:`load_centre` and :func:`load_target` read what ``--centre`` and ``--target`` name
(a random point, a model's hole vector, a scan JSON); :func:`parse_grid` and
:func:`parse_seeds` read ``--sigma`` and ``--seeds``. The sweep itself is
:mod:`blackholes.pipelines.coarsening`.

>>> parse_seeds("0-2,7")
[0, 1, 2, 7]
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from blackholes.errors import BlackholesError

CENTRE_SCALE = np.float32(0.02)  # the --init centre point of training/model.py: 0.02 * N(0, 1)
TARGET_LIMIT = 256 << 20  # a --target scan JSON larger than this is refused (a scan JSON is kilobytes)


# ---------------------------------------------------------------------------- inputs


@dataclass
class Centre:
    """Where the rows start: ``random`` (``0.02 * draw``, one per seed, as ``train --init centre``),
    a hole vector from a mask file, or given values."""

    kind: str  # "random" | "mask" | "values"
    values: np.ndarray | None = field(default=None, repr=False)  # float32 [D] (None for random)
    path: str | None = None  # the mask file
    key: str | None = None  # its tensor: vectors (or vectors_output / vectors_input), row 0
    stored_dtype: str | None = None  # the dtype the vector was stored in
    grid: str | None = None  # the coarsest grid its values live on (BF16 for a bf16 model saved as F32)

    def at_seed(self, draw: np.ndarray) -> np.ndarray:
        return draw * CENTRE_SCALE if self.values is None else self.values

    def describe(self) -> str:
        if self.kind == "random":
            return "a random centre per seed, c = 0.02 N(0, 1) (the `train --init centre` point)"
        if self.kind == "mask":
            return f"the largest hole's vector of `{self.path}` ({self.key} row 0, stored {self.stored_dtype})"
        return f"the given {self.grid or 'F32'} vector"

    def to_json(self) -> dict:
        out = {k: v for k, v in asdict(self).items() if k != "values"}
        out["description"] = self.describe()
        return out


def load_centre(spec) -> Centre:
    """``"random"``, a mask file of ``blackholes scan --mask`` (hole 1's vector), or an array.

    >>> load_centre("random").kind
    'random'
    >>> load_centre(np.float32([0.5, 1.0])).grid
    'BF16'
    """
    from blackholes.io.dtypes import grid_of, to_float64

    if isinstance(spec, str) and spec == "random":
        return Centre("random")
    if not isinstance(spec, (str, os.PathLike)):
        values = np.asarray(spec, np.float32).reshape(-1)
        _check_centre_values(values, "the centre")
        return Centre("values", values, grid=grid_of(values[None], "F32"))
    path = Path(spec)
    if path.suffix.lower() == ".json":
        raise BlackholesError(f"--centre {path}: a scan JSON holds no vectors; pass the mask file written with "
                              "`blackholes scan --mask`, or --centre random")
    key, stored, vector = _mask_vector(path)
    values = to_float64(vector, stored).astype(np.float32)  # exact: BF16/F16/F32 all fit in float32
    _check_centre_values(values, f"the hole vector in {path}")
    return Centre("mask", values, str(path), key, stored, grid_of(np.asarray(vector)[None], stored))


def _mask_vector(path: Path) -> tuple[str, str, np.ndarray]:
    """(key, stored dtype, row 0) of a mask file's hole vectors."""
    from blackholes.io.paths import input_file
    from blackholes.io.safetensors import map_tensor, read_header

    header = read_header(input_file(path, "--centre mask file"))
    keys = [k for k in ("vectors", "vectors_output", "vectors_input") if k in header.tensors]
    if not keys:
        raise BlackholesError(f"--centre {path} has no hole vectors (no 'vectors' tensor): pass a mask written by "
                              "`blackholes scan --mask`, or --centre random")
    info = header.tensors[keys[0]]
    if info.dtype not in ("BF16", "F16", "F32"):
        raise BlackholesError(f"--centre {path}: the hole vectors are {info.dtype}; the sweep starts from BF16, F16 "
                              "or F32 vectors")
    if len(info.shape) != 2 or info.shape[0] == 0 or info.shape[1] == 0:
        raise BlackholesError(f"--centre {path} holds no black hole ({keys[0]} has shape {list(info.shape)}); "
                              "use --centre random")
    return keys[0], info.dtype, np.array(map_tensor(header.path, info)[0])


def _check_centre_values(values: np.ndarray, what: str) -> None:
    if values.size == 0:
        raise BlackholesError(f"{what} is empty")
    if not np.isfinite(values).all():
        raise BlackholesError(f"{what} has non-finite values (inf or NaN): it cannot be a centre")


@dataclass
class Target:
    """A real model's hole sizes, from its scan JSON (``blackholes scan --json``)."""

    path: str | None
    sizes: list[int]  # largest first
    shape: list[int] | None = None  # [V, D] of the scanned matrix
    dtype: str | None = None
    source: str | None = None
    halo: int | None = None  # rows near the holes in no hole (``scan --near``), when scanned so

    @property
    def tokens(self) -> int:
        return int(sum(self.sizes))

    def to_json(self) -> dict:
        return {**asdict(self), "holes": len(self.sizes), "tokens": self.tokens}


def load_target(spec) -> Target:
    """The hole sizes of a scan JSON (for ``--matrix both``: the output matrix), or a list of sizes.

    >>> load_target([4, 814, 2]).sizes
    [814, 4, 2]
    """
    if not isinstance(spec, (str, os.PathLike)):
        sizes = [int(s) for s in spec]
        if any(s < 2 for s in sizes):
            raise BlackholesError("a hole has at least 2 tokens")
        return Target(None, sorted(sizes, reverse=True))
    from blackholes.io.paths import input_file
    from blackholes.io.untrusted import parse_json

    path = input_file(spec, "--target scan JSON")
    raw = path.read_bytes() if path.stat().st_size <= TARGET_LIMIT else None
    if raw is None:
        raise BlackholesError(f"--target {path} is larger than {TARGET_LIMIT:,} bytes; not a scan JSON")
    try:
        data = parse_json(raw, what=f"--target {path}")
    except BlackholesError as e:
        raise BlackholesError(f"{e}: not a scan JSON (not JSON at all, or not within limits; "
                              "write one with `blackholes scan MODEL --json PATH`)") from None
    if isinstance(data, dict) and isinstance(data.get("matrices"), dict):  # scan --matrix both
        data = data["matrices"].get("output") or data["matrices"].get("input")
    sizes, shape = _scan_sizes(data)
    if sizes is None:
        raise BlackholesError(f"--target {path} is not a scan JSON (no 'shape' [V, D] and 'groups' with sizes): "
                              "write one with `blackholes scan MODEL --json PATH`")
    halo = data.get("halo_size")
    return Target(str(path), sizes, shape, data.get("dtype"), data.get("source"),
                  int(halo) if isinstance(halo, int) and halo >= 0 else None)


def _scan_sizes(data) -> tuple[list[int] | None, list[int] | None]:
    """(sizes largest first, shape) of a scan JSON document, or (None, None) when it is not one."""
    if not isinstance(data, dict):
        return None, None
    shape, groups = data.get("shape"), data.get("groups")
    if not (isinstance(shape, list) and len(shape) == 2 and all(_count(v) and v > 0 for v in shape)):
        return None, None
    if not isinstance(groups, list) or not all(isinstance(g, dict) and _count(g.get("size")) for g in groups):
        return None, None
    sizes = sorted((g["size"] for g in groups), reverse=True)
    if any(s < 2 for s in sizes) or sum(sizes) > shape[0]:
        return None, None
    return sizes, shape


def _count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def parse_grid(text, what: str = "--sigma") -> list[float]:
    """σ values from numbers and ranges, sorted, each once — the same grid syntax as the
    training sweep (:func:`blackholes.pipelines.sweep.parse_values`): a number,
    ``log:START:STOP:N`` / ``lin:START:STOP:N``, or ``START:STOP:N[:log]``. Every σ must be
    finite, ≥ 0 and within float32's range.

    >>> parse_grid("0, log:1e-6:1e-4:3, 0.5")
    [0.0, 1e-06, 1e-05, 0.0001, 0.5]
    >>> parse_grid([0.2, "0:0.1:2"])
    [0.0, 0.1, 0.2]
    """
    from blackholes.pipelines.sweep import parse_values

    values = [float(v) for v in parse_values("sigma", text)]
    for v in values:
        if not math.isfinite(v) or v < 0 or v > float(np.finfo(np.float32).max):
            raise BlackholesError(f"{what}: every value must be finite, >= 0 and within float32's range, got {v}")
    return sorted(set(values))


def _tidy(values: np.ndarray) -> list[float]:
    """Grid values to 12 significant digits: 1e-05, not 9.999999999999999e-06."""
    return [float(f"{v:.12g}") for v in values]


def parse_seeds(text) -> list[int]:
    """Seeds: integers and ranges (``0-7``), as the training sweep reads them; sorted, each once.

    >>> parse_seeds("2,0, 1"), parse_seeds(7), parse_seeds([3, "1"]), parse_seeds("0-3")
    ([0, 1, 2], [7], [1, 3], [0, 1, 2, 3])
    """
    from blackholes.pipelines.sweep import parse_values

    seeds = [int(v) for v in parse_values("seed", text if isinstance(text, (list, tuple)) else [text])]
    if any(s < 0 or s >= 2**63 for s in seeds):
        raise BlackholesError("--seed: seeds must be between 0 and 2**63 - 1")
    return sorted(set(seeds))
