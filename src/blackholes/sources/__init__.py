"""From anything a user names to a :class:`Matrix`: files, folders, cached model ids."""

from blackholes.io.safetensors import Matrix, load_matrix

__all__ = ["Matrix", "load_matrix"]
