"""User-facing errors: one line that names the problem and the fix."""


class ComeError(Exception):
    """Bad input or an impossible request; the CLI prints it as one line and exits with code 2."""
