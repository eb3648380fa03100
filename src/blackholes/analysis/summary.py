"""The words of a scan: the summary :meth:`ScanResult.summary() <blackholes.analysis.groups.ScanResult.summary>`
prints at the terminal (plain text from the result's fields; nothing is imported)."""

from __future__ import annotations


def scan_summary(r, top: int = 10) -> str:
    """The printed report of a :class:`~blackholes.analysis.groups.ScanResult`, in the words of the
    original notebook: shape and dtype, unique vectors, groups, and the largest groups."""
    n, d = r.shape
    where = f"{r.key} in {r.path}" if r.path else r.key
    lines = [f"Scanning {where}" + (f"  ({r.note})" if r.note else "")]
    lines += [f"  Shape: ({n:,}, {d:,})", f"  Dtype: {r.dtype}"]
    if r.quantization:
        lines.append(f"  Identity: of the stored {r.quantization} row bytes (quantised blocks, as in the file)")
    if r.bytes_read is not None:
        lines.append(f"  Fetched: {r.bytes_read:,} bytes")
    lines.append("")
    lines += [
        "Degeneracy analysis:",
        f"  Unique vectors: {r.unique_vectors:,}",
        f"  Degenerate groups: {len(r.groups):,}",
        f"  Total black hole tokens: {r.black_hole_tokens:,} ({r.black_hole_tokens / n * 100:.2f}%)",
    ]
    if r.vocab_size is not None and n > r.vocab_size:
        pad = int(r.mask[r.vocab_size :].sum())
        lines.append(
            f"  Padding rows (beyond the tokenizer's {r.vocab_size:,} tokens): {n - r.vocab_size:,}, "
            f"{pad:,} of them black holes"
        )
    if r.groups and top > 0:
        lines += ["", "Largest degenerate groups:"]
        for g in r.groups[:top]:
            lines.append(f"  {g.id}. {g.size:,} tokens" + _examples(g))
        if len(r.groups) > top:
            lines.append(f"  ... {len(r.groups) - top} more (--top N, or --json for all)")
    elif not r.groups:
        lines += ["", "No black holes: every row is unique."]
    return "\n".join(lines + _anatomy_lines(r) + [f"note: {n}" for n in getattr(r, "notes", [])])


def _anatomy_lines(r) -> list[str]:
    """Halos, the holes' bit anatomy and the candidates, when the scan computed them."""
    lines = []
    if r.clusters is not None:
        c = r.clusters
        halo = sum(len(x.singletons) for x in c.clusters if x.holes)
        alone = [x for x in c.clusters if not x.holes]
        lines += ["", f"Near-duplicates (within {c.k} ULPs in every coordinate; {c.grid_note}):",
                  f"  Halo: {halo:,} further rows near a hole, in {sum(1 for x in c.clusters if x.holes):,} cluster(s)",
                  f"  Clusters without a hole: {len(alone):,} ({sum(x.size for x in alone):,} rows)"]
    if r.anatomy is not None:
        a = r.anatomy
        spread = max(a.spread_ulps) if a.spread_ulps else 0
        linked = [comp for comp in a.one_ulp_components if len(comp) > 1]
        chains = (f"; {sum(map(len, linked))} of them form {len(linked)} chain{'s' if len(linked) > 1 else ''} of "
                  "single 1-ULP steps" if linked else "; no two of them are one 1-ULP step apart")
        lines.append(f"  The {len(a.rows)} hole vectors differ in {len(a.coordinates):,} of {r.shape[1]:,} "
                     f"coordinates, by at most {spread:,} ULPs{chains}")
    if r.indicators is not None:
        ind = r.indicators
        lines += ["", f"Under-trained candidates (the lowest {ind.percentile:g}% of the {ind.main} indicator, "
                      f"not in a hole): {len(ind.candidates):,}"]
        if r.categories is not None and len(ind.candidates):
            shown = [repr(r.categories[int(i)].text) for i in ind.candidates[:6] if int(i) in r.categories]
            lines.append("  e.g. " + ", ".join(shown))
    return lines


def _examples(g, show: int = 4) -> str:
    """A few of a group's tokens, e.g. "  ids 151669-151935: '<|x|>', 'y', … (+803)"."""
    ids = g.token_ids
    text = f"   ids {ids[0]}..{ids[-1]}" if ids[-1] - ids[0] + 1 == len(ids) else f"   ids {ids[:show]}"[:-1]
    if g.tokens is None:
        if ids[-1] - ids[0] + 1 == len(ids):
            return text
        return text + (", ...]" if len(ids) > show else "]")
    shown = [repr(s) if s is not None else "<pad>" for s in g.tokens[:show]]
    more = f" (+{len(ids) - show} more)" if len(ids) > show else ""
    return f"   e.g. {', '.join(shown)}{more}"


def scan_markdown(r, top: int = 10) -> str:
    """A :class:`~blackholes.analysis.groups.ScanResult` as Markdown, for a notebook cell: the matrix, the
    counts, the largest holes as a table, and what the halo and the indicators found when computed."""
    n, d = r.shape
    where = f"`{r.key}` in `{r.path}`" if r.path else f"`{r.key or r.source}`"
    lines = [f"**Scan of {where}**: {n:,} × {d:,} {r.dtype}" + (f" ({r.note})" if r.note else ""), "",
             f"- unique vectors: {r.unique_vectors:,}",
             f"- black holes: {len(r.groups):,}, holding {r.black_hole_tokens:,} tokens "
             f"({r.black_hole_tokens / n * 100 if n else 0:.2f}% of the rows)"]
    if r.clusters is not None:
        halo = sum(len(x.singletons) for x in r.clusters.clusters if x.holes)
        lines.append(f"- halo (within {r.clusters.k} ULPs of a hole): {halo:,} further rows")
    if r.indicators is not None:
        lines.append(f"- under-trained candidates (lowest {r.indicators.percentile:g}%): "
                     f"{len(r.indicators.candidates):,}")
    if r.groups and top > 0:
        lines += ["", "| hole | tokens | ids | e.g. |", "|---:|---:|---|---|"]
        for g in r.groups[:top]:
            ids = g.token_ids
            span = f"{ids[0]}–{ids[-1]}" if ids[-1] - ids[0] + 1 == len(ids) else ", ".join(map(str, ids[:4])) + (
                ", …" if len(ids) > 4 else "")
            shown = ", ".join("pad" if t is None else _cell(repr(t)) for t in (g.tokens or [])[:3])
            lines.append(f"| {g.id} | {g.size:,} | {span} | {shown} |")
        if len(r.groups) > top:
            lines.append(f"\n… and {len(r.groups) - top:,} more holes (`to_json()` has them all)")
    lines += [f"\n*note:* {x}" for x in getattr(r, "notes", [])]
    return "\n".join(lines)


def _cell(text: str) -> str:
    """Text safe inside a Markdown table cell: no pipes, backticks or emphasis marks take effect."""
    return "`" + text.replace("`", "\\x60").replace("|", "\\x7c") + "`"
