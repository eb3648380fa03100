"""What a repair changed, proven: byte comparison, per-tensor sha256, and a re-scan.

:func:`prove` compares every file of the copy with the source's: a file without a repaired
matrix must hash the same; in a file with one, every differing byte must lie inside a repaired
row, and every tensor but the repaired ones must hash the same before and after.
:func:`rescan` scans the repaired matrices with :func:`blackholes.analysis.groups.scan`: under
``mean`` and ``zero`` the repaired rows form one known group (one vector written many times);
under ``mean-cov`` no two of them may share a vector. :func:`write_report` writes both into
``repair.json`` and a short ``repair.md``.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from blackholes.errors import BlackholesError

BLOCK = 8 << 20  # bytes compared at a time


def sha256_range(path: Path, start: int, stop: int) -> str:
    """sha256 of bytes ``start:stop`` of a file, read a block at a time."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        f.seek(start)
        left = stop - start
        while left > 0:
            chunk = f.read(min(BLOCK, left))
            if not chunk:
                break
            h.update(chunk)
            left -= len(chunk)
    return h.hexdigest()


def tensor_spans(path: Path) -> dict[str, tuple[int, int]]:
    """Every tensor of a safetensors or GGUF file: name -> (start, stop) byte offsets."""
    from blackholes.sources.load import is_gguf

    if is_gguf(path):
        from blackholes.sources.gguf import read_gguf_header

        return {t.name: (t.offset, t.offset + (t.nbytes or 0)) for t in read_gguf_header(path).tensors.values()}
    from blackholes.io.safetensors import read_header

    return {t.name: (t.start, t.end) for t in read_header(path).tensors.values()}


def changed_bytes(before: Path, after: Path, spans: np.ndarray) -> tuple[int, int]:
    """(bytes that differ, of them outside ``spans``), comparing the two files a block at a time.

    ``spans``: sorted, disjoint [start, stop) rows of int64, the repaired rows' bytes."""
    if before.stat().st_size != after.stat().st_size:
        raise BlackholesError(f"internal: the copy {after} changed size")
    starts, stops = spans[:, 0], spans[:, 1]
    differ = outside = 0
    with open(before, "rb") as a, open(after, "rb") as b:
        pos = 0
        while True:
            x, y = a.read(BLOCK), b.read(BLOCK)
            if not x:
                break
            where = np.flatnonzero(np.frombuffer(x, np.uint8) != np.frombuffer(y, np.uint8)) + pos
            if len(where):
                k = np.searchsorted(starts, where, side="right") - 1
                inside = (k >= 0) & (where < stops[np.maximum(k, 0)])
                differ += len(where)
                outside += int((~inside).sum())
            pos += len(x)
    return differ, outside


def rows_changed(before: Path, after: Path, t, ids: list[int]) -> int:
    """Bytes of target ``t``'s repaired rows that differ between the two files."""
    n = 0
    with open(before, "rb") as a, open(after, "rb") as b:
        for i in ids:
            a.seek(t.offset + i * t.row_bytes)
            b.seek(t.offset + i * t.row_bytes)
            x, y = a.read(t.row_bytes), b.read(t.row_bytes)
            n += int((np.frombuffer(x, np.uint8) != np.frombuffer(y, np.uint8)).sum())
    return n


def prove(p, tmp: Path, ids: list[int]) -> dict:
    """The ``changed`` matrices and the ``unchanged`` tensors and files, each with its sha256s."""
    by_file: dict[Path, list] = {}
    for t in p.targets:
        by_file.setdefault(t.file, []).append(t)
    changed, tensors, files, outside = [], {}, {}, 0
    for src, rel in p.files.items():
        dst = tmp / rel
        if src not in by_file:
            before, after = sha256_range(src, 0, src.stat().st_size), sha256_range(dst, 0, dst.stat().st_size)
            files[rel] = {"sha256_before": before, "sha256_after": after, "identical": before == after}
            continue
        targets = by_file[src]
        spans = np.array(sorted((t.offset + i * t.row_bytes, t.offset + (i + 1) * t.row_bytes)
                                for t in targets for i in ids), np.int64).reshape(-1, 2)
        _, out_of_rows = changed_bytes(src, dst, spans)
        outside += out_of_rows
        repaired = {t.key for t in targets}
        for name, (start, stop) in tensor_spans(src).items():
            before, after = sha256_range(src, start, stop), sha256_range(dst, start, stop)
            if name in repaired:
                t = next(t for t in targets if t.key == name)
                changed.append({"matrix": t.which, "key": name, "file": rel, "dtype": t.matrix.dtype,
                                "shape": list(t.matrix.shape), "row_bytes": t.row_bytes, "rows": len(ids),
                                "bytes_written": len(ids) * t.row_bytes, "bytes_changed": rows_changed(src, dst, t, ids),
                                "sha256_before": before, "sha256_after": after})
            else:
                tensors.setdefault(rel, {})[name] = {"sha256_before": before, "sha256_after": after,
                                                     "identical": before == after}
    same = outside == 0 and all(v["identical"] for v in files.values()) and all(
        v["identical"] for per in tensors.values() for v in per.values())
    if not same:
        raise BlackholesError("internal: the copy differs from the source outside the repaired rows; nothing written")
    return {"changed": changed, "unchanged_tensors": tensors, "unchanged_files": files,
            "bytes_outside_rows_identical": same}


def rescan(p, tmp: Path, ids: list[int], recipe: str) -> dict:
    """Scan each repaired matrix of the copy: the groups its repaired rows form now."""
    from blackholes.analysis.groups import scan
    from blackholes.sources.load import load_matrix

    chosen = set(ids)
    per_matrix, known, distinct = [], True, True
    for t in p.targets:
        result = scan(load_matrix(str(tmp / p.files[t.file]), key=t.key))
        together = [sorted(set(g.token_ids) & chosen) for g in result.groups]
        together = [g for g in together if len(g) > 1]
        per_matrix.append({"matrix": t.which, "key": t.key, "holes_after": len(result.groups),
                           "hole_tokens_after": result.black_hole_tokens, "repaired_rows_in_holes": together})
        known &= len(ids) < 2 or (len(together) == 1 and len(together[0]) == len(ids))
        distinct &= not together
    one_vector = recipe in ("mean", "zero")
    if one_vector:
        words = (f"the {len(ids):,} repaired rows form one known group: the {recipe} recipe writes one vector"
                 if known else f"the {recipe} rows do not form the one group the recipe writes")
    else:
        words = ("no two repaired rows are bit-identical any more" if distinct
                 else "some repaired rows are still bit-identical to each other (see repaired_rows_in_holes)")
    return {"matrices": per_matrix, "known_group": one_vector and known, "distinct": distinct,
            "ok": known if one_vector else distinct, "summary": words}


def verdicts(model: str, ids: list[int]) -> dict[int, dict]:
    """id -> the verifier's {max_prob, verdict, text} for ``ids`` of ``model`` (magikarp's method)."""
    from blackholes.verify import verify

    result = verify(model, ids, progress=False)
    return {t.id: {"text": t.text, "max_prob": t.max_prob, "verdict": t.verdict} for t in result.tokens}


def side_by_side(before: dict[int, dict], after: dict[int, dict]) -> dict:
    """The verdicts of each repaired token before and after, and how many changed."""
    rows = [{"id": i, "text": (before.get(i) or after.get(i) or {}).get("text"),
             "before": {k: before[i][k] for k in ("max_prob", "verdict")} if i in before else None,
             "after": {k: after[i][k] for k in ("max_prob", "verdict")} if i in after else None}
            for i in sorted(set(before) | set(after))]
    changed = sum(1 for r in rows if r["before"] and r["after"] and r["before"]["verdict"] != r["after"]["verdict"])
    return {"method": "magikarp", "tokens": rows, "verdicts_changed": changed}


def write_report(folder: Path, report: dict) -> None:
    """repair.json (everything) and repair.md (the short version) into ``folder``."""
    from blackholes.io.atomic import write_json, write_text

    write_json(folder / "repair.json", report)
    write_text(folder / "repair.md", report_markdown(report))


def report_markdown(r: dict) -> str:
    """A page a person reads: what changed, in bytes and rows, and the proof nothing else did."""
    lines = [f"# Repair of {r['source']}", "",
             f"Recipe **{r['recipe']}**" + (f" (seed {r['seed']})" if r.get("seed") is not None else "")
             + f", {r['rows']:,} rows (`--tokens {r['tokens']}`" + (f", from {r['from']}" if r.get("from") else "")
             + ").", "", "| matrix | tensor | file | dtype | rows | bytes written | bytes changed | sha256 before "
             "| sha256 after |", "|---|---|---|---|---|---|---|---|---|"]
    for c in r["changed"]:
        lines.append(f"| {c['matrix']} | `{c['key']}` | {c['file']} | {c['dtype']} | {c['rows']:,} | "
                     f"{c['bytes_written']:,} | {c['bytes_changed']:,} | `{c['sha256_before'][:16]}` | "
                     f"`{c['sha256_after'][:16]}` |")
    n_tensors = sum(len(v) for v in r["unchanged_tensors"].values())
    lines += ["", f"Nothing else changed: every byte outside the repaired rows is the source's "
              f"({'checked' if r['bytes_outside_rows_identical'] else 'NOT the case'}); {n_tensors:,} other "
              f"tensors and {len(r['unchanged_files']):,} other files hash the same before and after "
              "(sha256 of each in repair.json).", "", f"Re-scan: {r['check']['summary']}.", "",
              f"Metadata: {r['metadata']}.", ""]
    lines += [f"Note: {note}" for note in r.get("notes", [])] + ([""] if r.get("notes") else [])
    if r.get("verification"):
        lines += _verification_lines(r["verification"])
    return "\n".join(lines)


def _verification_lines(v: dict, top: int = 30) -> list[str]:
    """The repaired tokens' verdicts before and after, side by side (the first ``top``)."""
    lines = [f"Verified before and after ({v['method']}; {v['verdicts_changed']:,} verdicts changed):", "",
             "| id | text | max prob before | verdict before | max prob after | verdict after |",
             "|---:|---|---:|---|---:|---|"]
    for row in v["tokens"][:top]:
        b, a = row["before"] or {}, row["after"] or {}
        lines.append(f"| {row['id']} | {row['text']!r} | {b.get('max_prob', float('nan')):.2e} | {b.get('verdict')} | "
                     f"{a.get('max_prob', float('nan')):.2e} | {a.get('verdict')} |")
    if len(v["tokens"]) > top:
        lines.append(f"| ... | {len(v['tokens']) - top:,} more in repair.json | | | | |")
    return lines + [""]
