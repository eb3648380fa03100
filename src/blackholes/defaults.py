"""The defaults that more than one layer names, each typed once.

The analysis functions take them as keyword defaults, the command line declares its
options and writes its help texts from them, and the report re-creates a command from
them. A module's own knobs stay in that module (or its options dataclass); only what
two or more places would otherwise repeat lives here. Nothing is imported: the command
line reads this while it builds its parser, on the fast path of ``blackholes scan``.

>>> from blackholes import defaults
>>> defaults.PERCENTILE, defaults.NEAR_ULPS
(2.0, 8)
"""

PERCENTILE = 2.0  # candidates: the lowest P % of the main under-trained indicator
NEAR_ULPS = 8  # --near given bare: rows within K ULPs in every coordinate form a halo
REPRODUCE_STEPS = 2000  # a reproduce run: the hole forms, moves and freezes well within it
MAP_BINS = (24, 200)  # default histogram bins per axis of a density map: 4 sqrt(rows), clipped to this
MAP_BINS_ALLOWED = (2, 2000)  # --bins accepted by `blackholes map`
