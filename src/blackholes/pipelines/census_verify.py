"""``census ... --verify``: after a model's scan, verify its hole members and candidates with the model itself.

The verification is one more task of the runner (:mod:`blackholes.pipelines.runner`), a follow-up of the scan
row of the model's default matrix (the one tokens are produced from), so GPU workers of a Dask cluster take them
like any other task. Its counts join that row (appended again: the newest row of a key wins), and the whole
``verification`` section is written beside the model's scan JSON in ``DIR/models/``. The method is
:func:`blackholes.verify.verify` (Land & Bartolo 2024, "Fishing for Magikarp").
"""

from __future__ import annotations

COLUMNS = ("verified", "verification")  # what a verified row has


def needs_verification(task, row: dict | None, matrix: str = "both") -> bool:
    """Whether this scan row is one to verify (a model's first row: with ``--matrix both`` the input matrix's
    follow-up row is not verified again), and is not verified yet."""
    if matrix == "both" and task.request == "input":
        return False
    return row is not None and row.get("error") is None and row.get("verified") is None


def token_ids(doc: dict | None, row: dict) -> list[int]:
    """The hole members and candidates of a scan JSON (or none when the scan's JSON did not come back)."""
    if not doc:
        return []
    ids = {int(t) for g in doc.get("groups", []) for t in g.get("token_ids", [])}
    ids.update(int(c["id"]) for c in (doc.get("indicators") or {}).get("candidates", []))
    return sorted(ids)


def verify_job(task, ids: list[int]):
    """The runner's task verifying ``ids`` of ``task.source``; its memory is the model's estimate."""
    from blackholes.pipelines.runner import Task as Job

    return Job(key=f"verify-{task.name}", fn=verify_one, args=(task.source, tuple(ids)), kwargs={"task": task},
               memory=_memory(task.source), label=f"verify {task.source}")


def _memory(source: str) -> int:
    try:
        from blackholes.verify.model import locate, memory_estimate

        return memory_estimate(locate(source), "float32")
    except Exception:  # the task itself will say what is wrong, as its error
        return 0


def verify_one(source: str, ids: tuple, task=None) -> dict:
    """Verdicts for ``ids`` (an empty list verifies nothing and loads nothing): the ``verification`` section."""
    if not ids:
        return {"method": "magikarp", "tokens": [], "counts": {"verified": 0, "tested": 0}}
    from blackholes.verify import verify

    return verify(source, list(ids), progress=False).to_json()


def merged_row(row: dict, section: dict | None, error: str | None) -> dict:
    """The scan row with the verification's counts: ``verified`` (below 0.01), and ``verification`` (the counts
    per verdict, or the error)."""
    out = dict(row)
    if error is not None:
        out["verified"] = None
        out["verification"] = {"error": error}
        return out
    counts = dict(section.get("counts") or {})
    out["verified"] = counts.get("verified", 0)
    out["verification"] = {"method": section.get("method"), "dtype": section.get("dtype"), **counts,
                           "verified_ids": [t["id"] for t in section.get("tokens", []) if t["max_prob"] < 0.01]}
    return out
