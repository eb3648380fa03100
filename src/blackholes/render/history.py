"""The page and plots of ``blackholes history`` (:mod:`blackholes.pipelines.history`).

The page answers first, in a few lines per matrix: when the holes formed, whether they split
or merged, when they froze; then the checkpoints, the events and the holes, every number
exact. matplotlib is imported inside the plot functions only; PNGs are written atomically.

>>> print(headline({"steps": [0, 10], "first_hole_at": 10, "frozen_from": {"dead_set": None, "matrix": None},
...                 "resizes": 0, "lineages": []}, [], "output")[0])
The first hole appears at step 10.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from blackholes.io.atomic import write_json, write_text
from blackholes.render.page import Document

MAX_ROWS = 200  # table rows shown on the page (history.json has them all)
MAX_LANES = 40  # holes drawn in the swimlane: the longest-lived, then the largest
FISSION_COLOUR, MERGER_COLOUR, RESIZE_COLOUR = "#c0392b", "#2166ac", "#e08214"


def write_history(result, out: Path) -> dict[str, Path]:
    """history.json, history.md, history.html and the plots in ``out``; returns the paths."""
    out = Path(out)
    write_json(out / "history.json", result.to_json())
    plots = draw_plots(result, out / "plots")
    doc = history_document(result, out, plots)
    write_text(out / "history.md", doc.markdown())
    write_text(out / "history.html", doc.html())
    return {"json": out / "history.json", "md": out / "history.md", "html": out / "history.html", **plots}


# ---------------------------------------------------------------------------- words


def _at(step) -> str:
    return f"step {step:,}"


def headline(section: dict, events: list[dict], matrix: str) -> list[str]:
    """The answers, one sentence each: formed, split or merged, froze, resized."""
    lines = []
    first = section["first_hole_at"]
    if first is None:
        lines.append("No hole at any checkpoint: every row is distinct throughout.")
    elif first == section["steps"][0]:
        lines.append(f"Holes are already there at the first checkpoint ({_at(first)}).")
    else:
        lines.append(f"The first hole appears at {_at(first)}.")
    mine = [e for e in events if e["matrix"] == matrix]
    fis = [e for e in mine if e["kind"] == "fission"]
    mer = [e for e in mine if e["kind"] == "merger"]
    if fis or mer:
        at = sorted({e["step"] for e in fis + mer})
        where = ", ".join(f"{s:,}" for s in at[:8]) + (f" and {len(at) - 8:,} more" if len(at) > 8 else "")
        lines.append(f"Groups split **{len(fis):,}** time(s) and merged **{len(mer):,}** time(s), at step(s) {where}.")
    else:
        lines.append("No group ever split or merged between consecutive checkpoints.")
    changes = section.get("partition_changes") or []
    if changes and first is not None:
        lines.append(f"The holes took their final membership at {_at(changes[-1])}, the last checkpoint at which "
                     "any group's members changed.")
    dead, whole = section["frozen_from"]["dead_set"], section["frozen_from"]["matrix"]
    if first is not None:
        if dead is not None:
            lines.append(f"The dead set (the tokens in holes at the end) is frozen, no bit of its rows changing, "
                         f"from **{_at(dead)}** to the last checkpoint.")
        else:
            lines.append("The dead set is still moving at the last checkpoint (or there is none at the end).")
    lines.append(f"The whole matrix is frozen from {_at(whole)}." if whole is not None
                 else "The matrix still changes at the last checkpoint.")
    frozen = [h for h in section["lineages"] if h["frozen_from"] is not None]
    if frozen:
        lines.append("Frozen holes: " + ", ".join(f"hole lineage {h['id']} ({h['size']:,} tokens) from {_at(h['frozen_from'])}"
                                                  for h in frozen[:6]) + (" …" if len(frozen) > 6 else "") + ".")
    for e in (e for e in mine if e["kind"] == "resize"):
        lines.append(f"The vocabulary is resized at {_at(e['step'])}: {e['vocab_before']:,} → {e['vocab_after']:,} "
                     "rows (a resize, not a fission).")
    return lines


def history_document(result, out: Path, plots: dict[str, Path]) -> Document:
    good = result.good()
    bad = [c for c in result.checkpoints if c.get("error")]
    steps = sorted({c["step"] for c in good})
    doc = Document(f"History of the holes: {len(steps):,} checkpoints", out)
    for matrix, section in result.matrices.items():
        if len(result.matrices) > 1:
            doc.heading(f"The {matrix} matrix")
        doc.bullets(headline(section, result.events, matrix))
    if bad:
        doc.para(f"**{len(bad):,}** checkpoint(s) could not be read and are left out of the series: "
                 + "; ".join(f"`{c['label']}`: {c['error']}" for c in bad[:5]) + (" …" if len(bad) > 5 else ""))
    doc.para(f"Identity is bit identity at every checkpoint. {len(good):,} matrices; "
             f"{result.bytes_read:,} bytes read by this run ({result.read:,} checkpoint(s) read, the others "
             f"from an earlier run's rows) in {result.seconds:.1f} s.")
    for name, caption in (("counts", "Holes and tokens in holes at each checkpoint"),
                          ("swimlane", "Each hole's membership over time"),
                          ("last_motion", "The last checkpoint at which each token's row changed")):
        for key, path in plots.items():
            if key.startswith(name):
                doc.image(path, caption + (f" ({key.split(':', 1)[1]})" if ":" in key else ""))
    _tables(doc, result)
    return doc


def _tables(doc: Document, result) -> None:
    near = result.near is not None
    doc.heading("Checkpoints")
    header = ["checkpoint", "step", "matrix", "distinct", "holes", "tokens in holes", "largest", "hole sizes"]
    header += (["halo"] if near else []) + ["bytes read"]
    rows = []
    for c in result.checkpoints[:MAX_ROWS]:
        if c.get("error"):
            rows.append([c["label"], f"{c['step']:,}", c["matrix"], "error: " + c["error"]] + [""] * (len(header) - 4))
            continue
        sizes = ", ".join(f"{s:,}" for s in c["hole_sizes"][:8]) + (" …" if len(c["hole_sizes"]) > 8 else "")
        rows.append([c["label"], f"{c['step']:,}", c["matrix"], f"{c['distinct']:,}", f"{c['holes']:,}",
                     f"{c['tokens_in_holes']:,}", f"{c['largest']:,}", sizes or "-"]
                    + ([_num(c.get("halo"))] if near else []) + [f"{c['bytes_read']:,}"])
    doc.table(header, rows)
    doc.heading("Events between consecutive checkpoints")
    if result.events:
        doc.table(["step", "matrix", "event", "what"],
                  [[f"{e['step']:,}", e["matrix"], e["kind"], _event_words(e)] for e in result.events[:MAX_ROWS]])
    else:
        doc.para("None: no group split or merged, and no token joined or left the dead set.")
    for matrix, section in result.matrices.items():
        doc.heading(f"Holes ({matrix}): one id per membership" if len(result.matrices) > 1
                    else "Holes: one id per membership")
        doc.table(["hole", "tokens", "first seen", "last seen", "checkpoints", "members"],
                  [[h["id"], f"{h['size']:,}", f"{h['first_seen']:,}", f"{h['last_seen']:,}", h["checkpoints"],
                    _ids(h["members"])] for h in section["holes"][:MAX_ROWS]])
    if len(result.events) > MAX_ROWS or len(result.checkpoints) > MAX_ROWS:
        doc.para(f"Tables show the first {MAX_ROWS}; `history.json` has every row.")


def _num(v) -> str:
    return "-" if v is None else f"{v:,}"


def _ids(ids: list[int], n: int = 12) -> str:
    return ", ".join(str(t) for t in ids[:n]) + (f" … ({len(ids):,} tokens)" if len(ids) > n else "")


def _event_words(e: dict) -> str:
    if e["kind"] == "fission":
        return f"{len(e['before']):,} tokens → parts " + " | ".join(_ids(p, 6) for p in e["after"][:4])
    if e["kind"] == "merger":
        return " + ".join(_ids(p, 6) for p in e["before"][:4]) + f" → {len(e['after']):,} tokens"
    if e["kind"] == "resize":
        return f"vocabulary {e['vocab_before']:,} → {e['vocab_after']:,}"
    return f"{len(e['tokens']):,} token(s) {e['kind']} the dead set: {_ids(e['tokens'])}"


# ---------------------------------------------------------------------------- plots


def draw_plots(result, folder: Path) -> dict[str, Path]:
    """The three figures per matrix (suffix ``:matrix`` in the keys when there are several)."""
    folder.mkdir(parents=True, exist_ok=True)
    plots = {}
    several = len(result.matrices) > 1
    for matrix, section in result.matrices.items():
        tag = f":{matrix}" if several else ""
        stem = f"_{matrix}" if several else ""
        good = [c for c in result.good() if c["matrix"] == matrix]
        events = [e for e in result.events if e["matrix"] == matrix]
        plots["counts" + tag] = plot_counts(good, events, folder / f"holes{stem}.png")
        plots["swimlane" + tag] = plot_swimlane(good, section, folder / f"swimlane{stem}.png")
        censuses = result.censuses.get(matrix) or []
        if censuses and censuses[-1].shape[1] == good[-1]["vocab"]:
            c = dataclasses.replace(censuses[-1], last_motion=section["last_motion"])
            dead = sorted({t for m in section["holes"] if m["last_seen"] == good[-1]["step"] for t in m["members"]})
            from blackholes.render.lifecycle import plot_last_motion

            plots["last_motion" + tag] = plot_last_motion(c, folder / f"last_motion{stem}.png", dead)
    return plots


def plot_counts(good: list[dict], events: list[dict], path: Path) -> Path:
    """Holes and tokens in holes against step; fissions, mergers and resizes marked."""
    import matplotlib.pyplot as plt

    from blackholes.render.plots import save_figure

    steps = np.array([c["step"] for c in good])
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 6), sharex=True, height_ratios=(3, 2))
    top.plot(steps, [c["tokens_in_holes"] for c in good], "o-", color="black", ms=3, lw=1.4, label="tokens in holes")
    top.plot(steps, [c["largest"] for c in good], "s--", color="#888888", ms=2, lw=1.0, label="largest hole")
    bottom.plot(steps, [c["holes"] for c in good], "o-", color="#1b7837", ms=3, lw=1.4, label="holes")
    for kind, colour in (("fission", FISSION_COLOUR), ("merger", MERGER_COLOUR), ("resize", RESIZE_COLOUR)):
        at = sorted({e["step"] for e in events if e["kind"] == kind})
        for i, s in enumerate(at):
            for ax in (top, bottom):
                ax.axvline(s, color=colour, lw=0.8, alpha=0.35, label=f"{kind} ({len(at)})" if i == 0 and ax is top else None)
    top.set_ylabel("tokens")
    bottom.set_ylabel("holes")
    bottom.yaxis.get_major_locator().set_params(integer=True)
    if len(steps) > 1 and steps[-1] > 100 * max(1, steps[1] - steps[0]):
        bottom.set_xscale("symlog", linthresh=max(1, int(steps[1] - steps[0])), linscale=0.5)
    bottom.set_xlabel("step")
    top.legend(loc="best", fontsize=8)
    top.set_title(f"Holes at each of {len(good):,} checkpoints (exact bit identity)")
    for ax in (top, bottom):
        ax.grid(alpha=0.3)
    return save_figure(fig, path)


def plot_swimlane(good: list[dict], section: dict, path: Path) -> Path:
    """One lane per hole membership: a bar wherever a hole has exactly those members."""
    import matplotlib.pyplot as plt

    from blackholes.render.plots import save_figure

    steps = [c["step"] for c in good]
    ends = steps[1:] + [steps[-1] + max(1, (steps[-1] - steps[0]) // max(1, len(steps) - 1))]
    holes = sorted(section["holes"], key=lambda h: (-h["checkpoints"], -h["size"], h["id"]))[:MAX_LANES]
    holes.sort(key=lambda h: (h["first_seen"], h["id"]))
    lane = {h["id"]: i for i, h in enumerate(holes)}
    fig, ax = plt.subplots(figsize=(9, max(2.5, 0.3 * len(holes) + 1.2)))
    cmap = plt.get_cmap("viridis")
    biggest = max([h["size"] for h in holes], default=2)
    for c, a, b in zip(good, steps, ends):
        for hid, size in zip(c["hole_ids"], c["hole_sizes"]):
            if hid in lane:
                ax.broken_barh([(a, b - a)], (lane[hid] - 0.4, 0.8), color=cmap(np.log(size) / np.log(max(biggest, 2)) * 0.85))
    ax.set_yticks(range(len(holes)), [f"hole {h['id']} ({h['size']:,})" for h in holes], fontsize=7)
    ax.set_ylim(-0.8, max(len(holes), 1) - 0.2)
    ax.invert_yaxis()
    ax.set_xlim(steps[0], ends[-1])
    ax.set_xlabel("step (a bar: a hole with exactly these members, from that checkpoint to the next)")
    shown = (f"the {len(holes)} longest-lived of {len(section['holes']):,} hole memberships"
             if len(section["holes"]) > len(holes) else "each hole membership")
    ax.set_title(f"Swimlane: {shown} over time")
    ax.grid(alpha=0.3, axis="x")
    if not holes:
        ax.text(0.5, 0.5, "no hole at any checkpoint", transform=ax.transAxes, ha="center")
    return save_figure(fig, path)
