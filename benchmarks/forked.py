"""A worker forked from this process, talking over pipes as a ``subprocess.Popen`` with
``stdin=PIPE, stdout=PIPE`` would (grpo_step.py ``--fork-workers``): it starts without importing
torch and transformers again, which a test's process has imported; its memory figures then include
what this process holds, so the figures the docs quote come from fresh interpreters."""

from __future__ import annotations

import os
import sys
import traceback
from pathlib import Path
from typing import Callable


class Forked:
    """The part of a Popen the benchmarks' Worker uses: ``stdin``, ``stdout`` and ``wait()``."""

    def __init__(self, pid: int, stdin, stdout):
        self.pid, self.stdin, self.stdout = pid, stdin, stdout

    def wait(self) -> int:
        return os.waitstatus_to_exitcode(os.waitpid(self.pid, 0)[1])


def fork_child(run: Callable[[], None], stderr_path: Path, env: dict[str, str]) -> Forked:
    """``run()`` in a forked child with ``env`` set, its stdin and stdout pipes to this process,
    its stderr to ``stderr_path``; the child leaves with ``os._exit`` (0, or 1 on an exception)."""
    to_child, from_child = os.pipe(), os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.dup2(to_child[0], 0)
            os.dup2(from_child[1], 1)
            os.dup2(os.open(stderr_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), 2)
            for fd in (*to_child, *from_child):
                os.close(fd)
            sys.stdin, sys.stdout = open(0, closefd=False), open(1, "w", closefd=False)
            sys.stderr = open(2, "w", closefd=False)
            os.environ.update(env)
            run()
            code = 0
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    os.close(to_child[0])
    os.close(from_child[1])
    return Forked(pid, open(to_child[1], "w"), open(from_child[0]))
