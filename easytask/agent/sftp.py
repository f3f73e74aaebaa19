"""The agent's SFTP server acting as its --run-as user.

asyncssh's SFTP server runs inside the agent process (root, when it runs commands as another
user).  Here every operation that names a path runs with the calling thread's filesystem
identity switched to the run-as user: fsuid, fsgid and supplementary groups.  The kernel then
checks each path as it would for that user (a root process whose fsuid is not 0 loses its
file-permission capabilities for as long as that lasts), so a copy to a place the user may not
write fails with "permission denied", and files are created owned by the user.

These are per-thread switches (the raw system calls, not the libc wrappers that change every
thread), made and undone around each operation on the event loop's thread; the operations are
synchronous, so nothing else runs in between.
"""

from __future__ import annotations

import ctypes
import inspect
import os
import platform
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Any

import asyncssh

from easytask.agent.policy import SETGROUPS_SYSCALLS, Account

_libc = ctypes.CDLL(None, use_errno=True)


def _thread_setgroups(groups: list[int] | tuple[int, ...]) -> None:
    array = (ctypes.c_uint * len(groups))(*groups)
    if _libc.syscall(SETGROUPS_SYSCALLS[platform.machine()], len(groups), array) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setgroups: {os.strerror(err)}")


def _set_fs_ids(uid: int, gid: int) -> None:
    _libc.setfsgid(gid)
    _libc.setfsuid(uid)
    # setfsuid reports no errors: ask for the current value (an invalid id changes nothing)
    if _libc.setfsuid(0xFFFFFFFF) != uid or _libc.setfsgid(0xFFFFFFFF) != gid:
        raise PermissionError(f"cannot act as uid {uid} gid {gid}")


@contextmanager
def acting_as(account: Account) -> Iterator[None]:
    """Run the body with this thread's filesystem identity set to the account."""
    groups = os.getgroups()
    uid, gid = os.geteuid(), os.getegid()
    _thread_setgroups(account.groups)
    try:
        _set_fs_ids(account.uid, account.gid)
        yield
    finally:
        _set_fs_ids(uid, gid)
        _thread_setgroups(groups)


# Operations that resolve a path (permission checks happen there) or change an open file's
# metadata (ownership checks); read and write on an open file need no switch.
_PATH_OPS = (
    "open",
    "open56",
    "lstat",
    "stat",
    "setstat",
    "lsetstat",
    "fsetstat",
    "remove",
    "mkdir",
    "rmdir",
    "realpath",
    "rename",
    "posix_rename",
    "readlink",
    "symlink",
    "link",
    "statvfs",
)


class RunAsSFTPServer(asyncssh.SFTPServer):
    """SFTP for the agent's run-as user."""

    def __init__(self, chan: Any, account: Account) -> None:
        super().__init__(chan)
        self.account = account

    async def scandir(self, path: bytes) -> AsyncIterator[asyncssh.SFTPName]:
        with acting_as(self.account):
            names = [name async for name in super().scandir(path)]
        for name in names:
            yield name


def _as_user(name: str) -> Any:
    base = getattr(asyncssh.SFTPServer, name)

    async def method(self: RunAsSFTPServer, *args: Any) -> Any:
        with acting_as(self.account):
            result = base(self, *args)
            if inspect.isawaitable(result):
                result = await result
        return result

    method.__name__ = name
    method.__doc__ = f"{name}, checked as the run-as user"
    return method


for _name in _PATH_OPS:
    setattr(RunAsSFTPServer, _name, _as_user(_name))


class NoFilesSFTPServer(asyncssh.SFTPServer):
    """SFTP on an agent started with --no-files: every request is refused, saying why."""

    async def scandir(self, path: bytes) -> AsyncIterator[asyncssh.SFTPName]:
        _refuse()
        nothing: tuple[asyncssh.SFTPName, ...] = ()
        for name in nothing:  # an async generator like the base method's; never reached
            yield name


def _refuse(*_args: Any) -> Any:
    raise asyncssh.SFTPPermissionDenied("file transfers are off on this agent (--no-files)")


for _name in _PATH_OPS:
    setattr(NoFilesSFTPServer, _name, lambda self, *args: _refuse())


def sftp_factory(files: bool, account: Account | None) -> Any:
    """What the agent's SSH server uses for the `sftp` subsystem under its policy."""
    if not files:
        return NoFilesSFTPServer
    if account is not None and account.uid != os.geteuid():
        return lambda chan: RunAsSFTPServer(chan, account)
    return True  # asyncssh's own server, as the agent's user
