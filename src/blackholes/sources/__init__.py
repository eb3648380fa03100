"""From anything a user names to a :class:`Matrix`: files, folders, cached model ids."""

from blackholes.sources.load import load_matrix
from blackholes.sources.matrix import Matrix

__all__ = ["Matrix", "load_matrix"]
