"""Running a function in a forked child of a process that has imported everything once (the crash harness's runs,
the crash tests' killed runs): each child is a process of its own, killed alone, without paying a fresh
interpreter's imports (~10 s each)."""

from __future__ import annotations

import os
import sys
import threading
import traceback
from pathlib import Path
from typing import Callable, Mapping


def run_forked(fn: Callable[[], None], stdout: Path, env: Mapping[str, str | None], *,
               stderr: Path | None = None) -> int:
    """Run ``fn`` in a forked child with ``env`` applied (None removes a variable) and its output appended to
    ``stdout`` (and ``stderr`` to its own file when given); the child's exit status as ``subprocess`` reports it
    (``-9`` for SIGKILL, 1 when ``fn`` raised: the traceback is in the output). This process must run no thread:
    a forked child gets only the forking one."""
    assert threading.active_count() == 1, f"threads before fork: {threading.enumerate()}"
    pid = os.fork()
    if pid == 0:  # the child
        code = 1
        try:
            flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND
            out = os.open(stdout, flags, 0o600)
            os.dup2(out, 1)
            os.dup2(os.open(stderr, flags, 0o600) if stderr is not None else out, 2)
            for key, value in env.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
            fn()
            code = 0
        except BaseException:  # noqa: BLE001 - reported through the output and the exit status
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
