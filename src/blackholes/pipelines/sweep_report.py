"""A sweep's result: the runs table, the per-step arrays, and a few lines that sum them up.

>>> r = sweep("s", sigma="0,1e-3", seed="0-1", steps=200)   # doctest: +SKIP
>>> print(r.summary())                                      # doctest: +SKIP
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from blackholes.errors import BlackholesError
from blackholes.pipelines.sweep_batch import STEP_ARRAYS
from blackholes.pipelines.sweep_grid import Grid
from blackholes.pipelines.sweep_store import SweepStore


@dataclass
class SweepResult:
    """The runs table (one row per run of the grid that has finished, in run order) and the
    per-step arrays of those runs (``steps[name]``: ``[len(run_ids), len(step_numbers)]``)."""

    runs: list[dict]
    steps: dict[str, np.ndarray]
    run_ids: list[int]
    step_numbers: list[int]
    grid: Grid
    out: Path
    trained: int = 0
    skipped: int = 0
    failed: int = 0
    interrupted: bool = False
    stopped_by: str | None = None  # the signal that stopped the sweep ("SIGINT", "SIGTERM", "SIGHUP")
    seconds: float = 0.0
    files: dict[str, Path] = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"out": str(self.out), "grid": self.grid.to_json(), "trained": self.trained,
                "skipped": self.skipped, "failed": self.failed, "interrupted": self.interrupted,
                "seconds": self.seconds, "runs": self.runs}

    def to_pandas(self):
        """The runs table as a ``pandas.DataFrame`` (options and final counts flattened)."""
        try:
            import pandas as pd
        except ImportError:
            raise BlackholesError("to_pandas() needs pandas (pip install pandas); the rows are in .runs") from None
        return pd.json_normalize(self.runs)

    def summary(self) -> str:
        """A few lines per combination of the swept options other than the seed."""
        return summary_text(self.runs, list(self.grid.swept))

    def _repr_markdown_(self) -> str:
        """What Jupyter shows: the grid, what this run did, and the summary per combination of options."""
        swept = ", ".join(f"{k} ({len(v)})" for k, v in self.grid.swept.items()) or "nothing"
        state = " — **interrupted**" + (f" ({self.stopped_by})" if self.stopped_by else "") if self.interrupted else ""
        head = (f"**Sweep in `{self.out}`**: {self.grid.size:,} runs over {swept}; {len(self.runs):,} finished "
                f"({self.trained:,} trained now, {self.skipped:,} already there, {self.failed:,} failed){state}")
        text = self.summary()
        return head + ("\n\n```\n" + text.replace("```", "'''") + "\n```" if text.strip() else "")


def summary_text(rows: list[dict], swept: list[str]) -> str:
    """The finished runs, seeds pooled: never-seen hole intact, tokens in holes, freeze step, loss.

    >>> row = {"options": {"sigma": 0.0, "seed": 0}, "final": {"never_seen_one_point": True, "tokens_in_holes": 72,
    ...        "holes": 1}, "freeze_step": 1043, "final_loss": 2.5, "error": None}
    >>> print(summary_text([row], ["sigma", "seed"]))
    sigma=0: 1 run; never-seen hole one point 1/1; tokens in holes 72; holes 1; freezes from 1043; loss 2.500
    """
    keys = [k for k in swept if k != "seed"]
    cells: dict[tuple, list[dict]] = {}
    for r in rows:
        if r.get("error") is None:
            cells.setdefault(tuple(r["options"][k] for k in keys), []).append(r)
    lines = []
    for key, rs in cells.items():
        label = ", ".join(f"{k}={short(v)}" for k, v in zip(keys, key)) or "all runs"
        intact = sum(bool(r["final"]["never_seen_one_point"]) for r in rs)
        freeze = [r["freeze_step"] for r in rs if r.get("freeze_step") is not None]
        loss = [r["final_loss"] for r in rs if r.get("final_loss") is not None]
        lines.append(f"{label}: {len(rs)} run{'s' * (len(rs) != 1)}; never-seen hole one point {intact}/{len(rs)}; "
                     f"tokens in holes {spread([r['final']['tokens_in_holes'] for r in rs])}; "
                     f"holes {spread([r['final']['holes'] for r in rs])}; "
                     f"freezes from {spread(freeze) if freeze else 'never'}"
                     + (f" ({len(rs) - len(freeze)} never)" if freeze and len(freeze) < len(rs) else "")
                     + (f"; loss {np.mean(loss):.3f}" if loss else ""))
    return "\n".join(lines)


def short(v) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def spread(values: list) -> str:
    lo, hi = min(values), max(values)
    return f"{lo}" if lo == hi else f"{np.median(values):g} [{lo}-{hi}]"


def collect(result: SweepResult, store: SweepStore, rows: dict[int, dict], grid: Grid) -> None:
    """The result's table and arrays, and ``steps.safetensors``, from every row of this grid."""
    mine = {r: row for r, row in rows.items() if 0 <= r < grid.size
            and (store.finished(row, False) or (row.get("error") is not None and isinstance(row.get("options"), dict)))}
    result.runs = [mine[r] for r in sorted(mine)]
    path = store.write_steps(mine)
    if path is None:
        return
    from blackholes.io.safetensors import open_tensor, read_header

    header = read_header(path)
    result.run_ids = json.loads(header.metadata["runs"])
    result.step_numbers = json.loads(header.metadata["steps"])
    result.steps = {name: np.array(open_tensor(path, name, header)) for name in STEP_ARRAYS}
    result.files = {"runs": store.runs_file, "steps": path, "grid": store.out / "sweep.json"}
