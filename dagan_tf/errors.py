"""The package's user-facing error type."""


class DaganError(Exception):
    """Bad input or configuration; the CLI prints it as a one-line ``Error: …`` and exits ``exit_code``."""

    exit_code = 1
