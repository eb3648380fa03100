"""``blackholes map``: the density map of an embedding matrix, without and with the black-hole mask.

Parsing and calling only; the work is :func:`blackholes.analysis.density.density_map`
and :func:`blackholes.render.plots.plot_density_map`.

>>> import argparse
>>> sub = argparse.ArgumentParser(prog="blackholes").add_subparsers()
>>> args = add_parser(sub).parse_args(["model.safetensors", "--out", "map.png", "--auto-mask"])
>>> args.source, args.out, args.auto_mask, args.bins
('model.safetensors', 'map.png', True, None)
"""

from __future__ import annotations

import argparse

from blackholes import defaults
from blackholes.cli.scan import add_source_arguments, matrix_files
from blackholes.errors import BlackholesError


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "map",
        help="density map of an embedding matrix, without and with the black-hole mask",
        description=(
            "Project an embedding matrix onto its two leading principal directions (randomised PCA, "
            "streamed over the memory-mapped rows) and draw the token density as heat maps side by side, "
            "without and with the black-hole mask, plus the distribution of row norms. "
            "SOURCE is anything `blackholes scan` accepts."
        ),
    )
    add_source_arguments(p)
    group = p.add_mutually_exclusive_group()
    group.add_argument("--mask", metavar="PATH", help="mask file written by `blackholes scan --mask`")
    group.add_argument("--auto-mask", action="store_true", help="scan the matrix for black holes first")
    p.add_argument("--out", metavar="FILE.png", required=True, help="where to write the figure (PNG)")
    p.add_argument("--json", metavar="PATH", help="also write the projection's numbers as JSON")
    low, high = defaults.MAP_BINS
    p.add_argument("--bins", type=int, metavar="N",
                   help=f"histogram bins per axis (default: 4 sqrt(rows), from {low} to {high})")
    p.add_argument("--title", help="figure title (default: the source and tensor name)")
    p.add_argument("--quiet", action="store_true", help="print nothing but errors")
    return p


def run(args) -> int:
    from blackholes.analysis.density import density_map
    from blackholes.io.paths import check_outputs
    from blackholes.sources import load_matrix

    if not args.out.lower().endswith(".png"):
        raise BlackholesError(f"--out must name a .png file, got {args.out}")
    low, high = defaults.MAP_BINS_ALLOWED
    if args.bins is not None and not low <= args.bins <= high:
        raise BlackholesError(f"--bins must be between {low} and {high}, got {args.bins}")
    args.quiet = args.quiet or args.json == "-"  # standard output is the JSON
    outputs = (args.out, args.json)
    check_outputs(outputs, inputs=(args.source, args.mask))  # fail before any work, not after it
    m = load_matrix(args.source, key=args.key, matrix=args.matrix)  # the header only: cheap
    check_outputs(outputs, inputs=matrix_files(m))
    result = density_map(
        m, mask=args.mask, auto_mask=args.auto_mask,
        bins=args.bins, progress=not args.quiet,
    )
    from blackholes.render.plots import plot_density_map

    plot_density_map(result, args.out, title=args.title)
    if args.json:
        from blackholes.io.atomic import write_json

        write_json(args.json, result.to_json())
    if not args.quiet:
        _summary(result, args)
    return 0


def _summary(result, args) -> None:
    V, D = result.shape
    print(f"Matrix: {result.source} [{result.key}]  {V:,} x {D:,} {result.dtype}")
    ratio = result.full.explained_variance_ratio
    print(f"PC1, PC2 explain {ratio[0]:.1%}, {ratio[1]:.1%} of the variance (all tokens)")
    print(f"Densest bin without mask: {result.peak_bin_count():,} tokens")
    if result.masked is not None:
        print(
            f"Densest bin with mask:    {result.peak_bin_count(masked=True):,} tokens "
            f"({result.black_hole_tokens:,} black-hole tokens masked, from {result.mask_source})"
        )
    elif result.mask is not None:
        print(f"No black holes (mask from {result.mask_source} is empty): nothing to mask, one map drawn")
    else:
        print("No mask given: pass --auto-mask (or --mask PATH) to compare with the black holes removed")
    print(f"Map written to {args.out}")
    if args.json:
        print(f"Numbers written to {args.json}")
