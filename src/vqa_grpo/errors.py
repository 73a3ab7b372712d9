"""The one exception type the CLI turns into a one-line error and exit code 2."""


class UserError(Exception):
    """Bad input from the user: a wrong config key, a missing file, an unusable model directory.

    The message is one line that names the problem and the fix. The CLI prints it as
    ``error: <message>`` and exits with code 2 (the traceback only with ``--debug``).
    """


class TrainingStopped(RuntimeError):
    """The run stopped early: a stop signal or too many bad steps in a row (after saving a checkpoint),
    a full disk during a save, or a collective that failed because another process died or hangs.
    ``every_rank``: each process says it (its own view), not only rank 0."""

    def __init__(self, message: str, exit_code: int, every_rank: bool = False):
        super().__init__(message)
        self.exit_code = exit_code
        self.every_rank = every_rank


class RewardFunctionError(RuntimeError):
    """A user's reward function failed during training (raised, or returned a NaN, an inf, a
    non-number or the wrong number of values). The message is one line naming the function, the
    example and what it returned; the CLI prints it and exits with code 1 (the last checkpoint on
    disk is left as it was)."""
