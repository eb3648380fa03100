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


class Stopped(KeyboardInterrupt):
    """A run stopped by a signal (``"SIGINT"``, ``"SIGTERM"``, ``"SIGHUP"``) that a lower layer
    already caught to keep a valid partial output; ``kept`` says what was kept (and how to go on).
    The CLI prints one line, ``blackholes: terminated (SIGTERM): <kept>``, and exits 128 + the signal's number.

    >>> Stopped("SIGTERM", kept="3 rows kept in c/census.jsonl").signal_name
    'SIGTERM'
    """

    def __init__(self, signal_name: str | None = None, kept: str | None = None):
        super().__init__(signal_name or "SIGINT")
        self.signal_name = signal_name or "SIGINT"
        self.kept = kept
