"""The one exception the CLI turns into a single line on stderr."""


class BlackholesError(Exception):
    """Bad input or an impossible request, worded for the person at the terminal.

    The CLI prints ``blackholes: error: <message>`` and exits with status 2; the
    Python API lets it propagate so notebooks see the same message.

    >>> raise BlackholesError("no such file: model.safetensors")
    Traceback (most recent call last):
    ...
    blackholes.errors.BlackholesError: no such file: model.safetensors
    """
