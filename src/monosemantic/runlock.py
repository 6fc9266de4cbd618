"""One writer at a time per run directory: ``RUN/.lock``, held with ``flock`` and holding the
holder's pid and command.

The kernel drops an ``flock`` when its process dies, however it dies (kill -9 included), so a lock
file left behind by a killed writer is stale by construction and the next writer simply takes it;
the pid written inside only serves to name the holder to a second writer. Readers (``serve``,
``search``, ``feature``, the notebook API) never take the lock: files are replaced atomically and
``features.sqlite`` is in WAL mode, so they read the last committed state while a writer works.
Under torchrun only rank 0 takes it (the ranks of one command are one writer).
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import inspect
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from monosemantic.errors import UserError
from monosemantic.integrity import seal_db, unseal_db

LOCK_NAME = ".lock"

_held: dict[Path, tuple[int, int]] = {}  # run dir -> (fd, depth): a stage may call another stage

F = TypeVar("F", bound=Callable[..., Any])


def holder(run: Path) -> dict[str, Any] | None:
    """What the lock file says about its (last) holder: pid, stage, command, since; None if absent."""
    try:
        return dict(json.loads((run / LOCK_NAME).read_text() or "null") or {}) or None
    except (OSError, json.JSONDecodeError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def run_lock(run: Path, stage: str, creates: bool = False) -> Iterator[None]:
    """Hold ``run``'s writer lock for ``stage`` (re-entrant within a process). A run directory
    that does not exist is created when ``creates``, else left to the stage to report.

    Raises:
        UserError: another live process holds it (the message names its pid and stage).
    """
    run = Path(run).resolve()
    if run in _held:
        fd, depth = _held[run]
        _held[run] = (fd, depth + 1)
        try:
            yield
        finally:
            _held[run] = (fd, _held[run][1] - 1)
        return
    made = not run.is_dir()
    if made:
        if not creates:
            yield
            return
        run.mkdir(parents=True, exist_ok=True)
    fd = os.open(run / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        info = holder(run) or {}
        pid = info.get("pid", "?")
        who = f"`monosemantic {info.get('stage', '?')}` (pid {pid}, since {info.get('since', '?')})"
        if isinstance(pid, int) and not _alive(pid):
            who += ", whose process has ended"
        raise UserError(
            f"{run} is being written by {who}: wait for it to finish or stop it, then rerun "
            "(readers such as serve and search work meanwhile)"
        ) from None
    # the previous holder's pid may still be in the file: a stale lock, replaced here
    os.ftruncate(fd, 0)
    info = {
        "pid": os.getpid(),
        "stage": stage,
        "command": " ".join(sys.argv[:6]),
        "since": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
    _held[run] = (fd, 1)
    sealed = unseal_db(run)
    failed = True
    try:
        yield
        failed = False
    finally:
        seal_db(run, sealed)
        del _held[run]
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)  # the file stays (unlinking it would race another writer's open)
        if made and failed:
            _remove_if_only_lock(run, fd)
        os.close(fd)  # releases the flock


def _remove_if_only_lock(run: Path, fd: int) -> None:
    """A run directory this writer created and whose stage failed before writing anything leaves
    no empty directory behind (a rerun would otherwise find a run that is not one). Called while
    the flock is held, so no other writer is inside; one that opened the lock file meanwhile
    finds it gone on its next open."""
    with contextlib.suppress(OSError):
        if [p.name for p in run.iterdir()] == [LOCK_NAME]:
            (run / LOCK_NAME).unlink()
            run.rmdir()


def _is_rank0() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def writes_run(param: str, stage: str, creates: bool = False) -> Callable[[F], F]:
    """Decorate a ``run_*`` stage so that it holds the writer lock of the run directory passed as
    its argument ``param`` (on rank 0 only under torchrun)."""

    def wrap(fn: F) -> F:
        sig = inspect.signature(fn)

        @functools.wraps(fn)
        def locked(*args: Any, **kwargs: Any) -> Any:
            if not _is_rank0():
                return fn(*args, **kwargs)
            run = Path(sig.bind(*args, **kwargs).arguments[param])
            with run_lock(run, stage, creates):
                return fn(*args, **kwargs)

        return locked  # type: ignore[return-value]

    return wrap
