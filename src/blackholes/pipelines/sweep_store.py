"""A sweep folder::

    sweep.json          the grid; re-running with the same grid resumes, another grid is refused
    runs.jsonl          one row per finished run (io/jsonl.py: fsynced appends, a torn tail ignored)
    parts/              each batch's per-step arrays, written before its rows (a row names its part)
    steps.safetensors   per-step arrays [runs, steps + 1] of every finished run, in run order
    recordings/         full recordings of the runs asked for, byte for byte `train`'s
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from blackholes.errors import BlackholesError
from blackholes.io.jsonl import JsonlStore, clean
from blackholes.pipelines.sweep_batch import STEP_ARRAYS, BatchOutcome, BatchTask
from blackholes.pipelines.sweep_grid import Grid

FORMAT = "blackholes.sweep/1"


class SweepStore:
    """The sweep folder: ``sweep.json``, ``runs.jsonl``, ``parts/``, ``steps.safetensors``, ``recordings/``."""

    def __init__(self, out):
        self.out = Path(out)
        self.runs_file = self.out / "runs.jsonl"
        self.parts = self.out / "parts"
        self.recordings = self.out / "recordings"
        self.store = JsonlStore(self.runs_file)

    def open(self, grid: Grid, *, recordings: bool) -> None:
        """Create the folder (or check it holds this grid) and write ``sweep.json``."""
        from blackholes.io.atomic import write_json

        if self.out.exists() and not self.out.is_dir():
            raise BlackholesError(f"--out {self.out} exists and is not a folder")
        if not self.out.exists() and not self.out.parent.is_dir():
            raise BlackholesError(f"--out {self.out}: its folder {self.out.parent} does not exist")
        grid_file = self.out / "sweep.json"
        doc = {"format": FORMAT, **clean(grid.to_json())}
        if grid_file.is_file():
            old = _read_json(grid_file)
            if {k: old.get(k) for k in ("swept", "fixed")} != {k: doc[k] for k in ("swept", "fixed")}:
                raise BlackholesError(f"{self.out} holds a different sweep ({_describe(old)}); use another --out, "
                                      "or the same options to resume it")
        elif self.runs_file.exists():
            raise BlackholesError(f"{self.out} has runs.jsonl but no sweep.json; use another --out")
        try:
            self.out.mkdir(exist_ok=True)
            self.parts.mkdir(exist_ok=True)
            if recordings:
                self.recordings.mkdir(exist_ok=True)
        except OSError as e:
            raise BlackholesError(f"cannot create {self.out}: {e.strerror or e}") from None
        if not os.access(self.out, os.W_OK):
            raise BlackholesError(f"cannot write to {self.out} (permission denied)")
        if not grid_file.is_file():
            write_json(grid_file, doc)

    def recording_path(self, run: int) -> str:
        return str(self.recordings / f"run-{run:06d}.safetensors")

    def rows(self) -> dict[int, dict]:
        """The newest row of each run in ``runs.jsonl`` (a torn last line is not a row)."""
        return {row["run"]: row for row in self.store.rows()
                if isinstance(row.get("run"), int) and not isinstance(row.get("run"), bool)}

    def save(self, task: BatchTask, outcome: BatchOutcome) -> None:
        """The batch's part file first, then its rows: a row in runs.jsonl always has its data."""
        from blackholes.io.safetensors import save_safetensors

        if outcome.arrays is not None:
            part = self.parts / f"{task.name}.safetensors"
            steps = outcome.arrays["loss"].shape[1]
            save_safetensors(part, outcome.arrays, {"runs": json.dumps(list(task.runs)),
                                                    "steps": json.dumps(list(range(steps)))})
            for row in outcome.rows:
                row["part"] = part.name
        self.store.append(outcome.rows)

    def finished(self, row: dict | None, wants_recording: bool) -> bool:
        """Whether ``row`` is a finished run: no error, its part file there (and its recording, if asked)."""
        if row is None or row.get("error") is not None or not isinstance(row.get("part"), str):
            return False
        if not (isinstance(row.get("options"), dict) and isinstance(row["options"].get("steps"), int)
                and isinstance(row.get("final"), dict)):
            return False  # a row without what the report reads: trained again, never a crash
        if not (self.parts / row["part"]).is_file():
            return False
        return not wants_recording or bool(row.get("recording") and Path(row["recording"]).is_file())

    def write_steps(self, rows: dict[int, dict]) -> Path | None:
        """``steps.safetensors`` from the finished rows' parts, in run order (padded to the longest run)."""
        from blackholes.io.safetensors import open_tensor, read_header, save_safetensors

        done = sorted(r for r, row in rows.items() if self.finished(row, False))
        if not done:
            return None
        length = max(int(rows[r]["options"]["steps"]) for r in done) + 1
        out = {name: np.full((len(done), length), fill, dtype) for name, (dtype, fill) in STEP_ARRAYS.items()}
        by_part: dict[str, list[int]] = {}
        for i, r in enumerate(done):
            by_part.setdefault(rows[r]["part"], []).append(i)
        for part, slots in by_part.items():
            path = self.parts / part
            header = read_header(path)
            ids = json.loads(header.metadata["runs"])
            for name in STEP_ARRAYS:
                data = open_tensor(path, name, header)
                for i in slots:
                    row = data[ids.index(done[i])]
                    out[name][i, : len(row)] = row
        target = self.out / "steps.safetensors"
        save_safetensors(target, out, {"runs": json.dumps(done), "steps": json.dumps(list(range(length))),
                                       "format": json.dumps(FORMAT)})
        return target


def _read_json(path: Path) -> dict:
    from blackholes.io.untrusted import parse_json

    try:
        data = parse_json(path.read_bytes(), what=str(path))
    except OSError as e:
        raise BlackholesError(f"cannot read {path}: {e.strerror or e}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise BlackholesError(f"{path} is not a sweep's grid (format {FORMAT})")
    return data


def _describe(doc: dict) -> str:
    swept = doc.get("swept") or {}
    parts = [f"{k} {','.join(map(str, v[:4]))}{',...' if len(v) > 4 else ''}" for k, v in swept.items()]
    return f"{doc.get('runs', '?')} runs: " + ("; ".join(parts) if parts else "one run")
