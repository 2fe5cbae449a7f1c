"""User-facing errors: one line that names the problem and the fix."""


class ComeError(Exception):
    """Bad input or an impossible request; the CLI prints it as one line and exits with code 2."""


class MethodRefusal(ComeError):
    """A method cannot run with these settings (e.g. too few calibration windows for its held-out split), while
    other methods can: `come compare` records it as that method's failed row and goes on."""
