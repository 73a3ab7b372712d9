"""The package's exceptions. Each derives from ``Exception``, none from ``RuntimeError``: torch
raises RuntimeErrors (an out-of-memory error, a failed collective), and the trainer's handlers for
those must never take one of these for one.

UserError            bad input (a wrong config key, a missing file); the CLI prints one line, exit 2
ConfigError          a UserError: a config key, type or value that is not allowed (config_load.py, config_checks.py)
RewardFunctionError  a user's reward function failed during training; the CLI prints one line, exit 1
TrainingStopped      the run stopped early, after saving what it could; the CLI exits with its code
BadExample           one example cannot be used (its image fails to decode); it is skipped and counted
"""


class UserError(Exception):
    """Bad input from the user: a wrong config key, a missing file, an unusable model directory.

    The message is one line that names the problem and the fix. The CLI prints it as
    ``error: <message>`` and exits with code 2 (the traceback only with ``--debug``).
    """


class ConfigError(UserError):
    """A config key, type or value that is not allowed."""


class TrainingStopped(Exception):
    """The run stopped early: a stop signal or too many bad steps in a row (after saving a checkpoint),
    a full disk during a save, or a collective that failed because another process died or hangs.
    ``every_rank``: each process says it (its own view), not only rank 0."""

    def __init__(self, message: str, exit_code: int, every_rank: bool = False):
        super().__init__(message)
        self.exit_code = exit_code
        self.every_rank = every_rank


class RewardFunctionError(Exception):
    """A user's reward function failed during training (raised, or returned a NaN, an inf, a
    non-number or the wrong number of values). The message is one line naming the function, the
    example and what it returned; the CLI prints it and exits with code 1 (the last checkpoint on
    disk is left as it was)."""


class BadExample(Exception):
    """One example cannot be used (its image fails to decode). The trainer skips it and counts it.

    ``reason`` says what happened; ``kind`` is the short name the run's skip counts use.
    """

    def __init__(self, example_id: str, reason: str, kind: str = "corrupt_image"):
        super().__init__(f"example {example_id}: {reason}")
        self.example_id = example_id
        self.reason = reason
        self.kind = kind
