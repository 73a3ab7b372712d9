"""A ``vqa-grpo sft`` run in a child process forked from the test's (test_faults.py)."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path


class Child:
    """`vqa-grpo sft ARGS` in a child process forked from this one (``prelude`` runs first, in the
    child): a real process to signal and kill, without the seconds a fresh interpreter spends
    importing torch and transformers, which this one has imported. The child starts as a fresh
    ``python -c`` would: Python's own SIGINT and SIGTERM handlers, no logging handler, stderr to a
    file; it leaves with ``os._exit``, so nothing of this process's (pytest's) exit runs there.
    Popen's ``poll``, ``wait``, ``send_signal``, ``communicate`` and ``returncode``; the stderr file
    is read into ``stderr`` and removed when the child has ended."""

    def __init__(self, args: list[str], prelude: str = ""):
        fd, name = tempfile.mkstemp(prefix="cli-", suffix=".stderr")
        os.close(fd)
        self.stderr_path, self.returncode, self.stderr = Path(name), None, ""
        sys.stdout.flush()
        sys.stderr.flush()
        self.pid = os.fork()
        if self.pid == 0:
            self._child(args, prelude)

    def _child(self, args: list[str], prelude: str) -> None:
        code = 1
        try:
            os.dup2(os.open(self.stderr_path, os.O_WRONLY), 2)
            os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
            sys.stdout, sys.stderr = open(1, "w", closefd=False), open(2, "w", closefd=False)
            signal.signal(signal.SIGINT, signal.default_int_handler)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            logging.root.handlers.clear()
            os.environ["OMP_NUM_THREADS"] = "1"
            exec(prelude, {})
            from vqa_grpo.cli import main

            code = main(["sft", *args])
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stderr.flush()
            os._exit(code)

    def poll(self) -> int | None:
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self._ended(status)
        return self.returncode

    def _ended(self, status: int) -> None:
        self.returncode = os.waitstatus_to_exitcode(status)  # -N when signal N ended it, as Popen's
        self.stderr = self.stderr_path.read_text()
        self.stderr_path.unlink()

    def wait(self, timeout: float = 300) -> int:
        deadline = time.time() + timeout
        while self.poll() is None:
            if time.time() > deadline:
                os.kill(self.pid, signal.SIGKILL)
                self._ended(os.waitpid(self.pid, 0)[1])
                raise subprocess.TimeoutExpired(f"vqa-grpo sft (pid {self.pid})", timeout)
            time.sleep(0.01)
        return self.returncode

    def send_signal(self, sig: int) -> None:
        os.kill(self.pid, sig)

    def communicate(self, timeout: float = 300) -> tuple[str, str]:
        self.wait(timeout)
        return "", self.stderr
