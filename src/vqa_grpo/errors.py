"""The one exception type the CLI turns into a one-line error and exit code 2."""


class UserError(Exception):
    """Bad input from the user: a wrong config key, a missing file, an unusable model directory.

    The message is one line that names the problem and the fix. The CLI prints it as
    ``error: <message>`` and exits with code 2 (the traceback only with ``--debug``).
    """


class TrainingStopped(RuntimeError):
    """The run stopped early after saving a checkpoint: a stop signal, or too many bad steps in a row."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code
