"""The agent's SFTP server: acting as its --run-as user, kept inside its --file-dir directories.

asyncssh's SFTP server runs inside the agent process (root, when it runs commands as another
user).  Here every operation that names a path runs with the calling thread's filesystem
identity switched to the run-as user: fsuid, fsgid and supplementary groups.  The kernel then
checks each path as it would for that user (a root process whose fsuid is not 0 loses its
file-permission capabilities for as long as that lasts), so a copy to a place the user may not
write fails with "permission denied", and files are created owned by the user.

These are per-thread switches (the raw system calls, not the libc wrappers that change every
thread), made and undone around each operation on the event loop's thread; the operations are
synchronous, so nothing else runs in between.

With `--file-dir`, every path a request names is checked before the operation: made absolute,
`..` removed, the symlinks of its directories resolved, and both that path and the file it
finally points to must be inside one of the directories, else the request fails with "permission
denied".  The operation acts on the checked path in the same synchronous step (no other request
runs in between), and every request is checked anew: a link inside a named directory that points
outside is refused whenever it is used.
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

from easytask.agent.policy import SETGROUPS_SYSCALLS, Account, Policy

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


def inside(path: str, dirs: tuple[str, ...]) -> bool:
    """Whether a real path is one of the directories or below one of them."""
    return any(path == d or path.startswith(d.rstrip("/") + "/") for d in dirs)


def confine(path: bytes, dirs: tuple[str, ...]) -> bytes:
    """The path to act on for a requested one, if it stays inside `dirs` (else permission denied).

    The directories of the path are resolved (symlinks, `..`), its last name is kept as it is
    (removing a symlink removes the link); the file that name finally points to must be inside
    too.
    """
    absolute = os.path.abspath(os.fsdecode(path) or ".")
    parent, name = os.path.split(absolute)
    checked = os.path.join(os.path.realpath(parent), name) if name else os.path.realpath(parent)
    if not (inside(checked, dirs) and inside(os.path.realpath(checked), dirs)):
        shown = os.fsdecode(path)
        raise asyncssh.SFTPPermissionDenied(
            f"{shown}: outside the directories file transfers may touch on this agent (--file-dir)"
        )
    return os.fsencode(checked)


class ConfinedSFTPServer(asyncssh.SFTPServer):
    """SFTP that touches only paths inside the agent's --file-dir directories (all when none)."""

    def __init__(self, chan: Any, dirs: tuple[str, ...] = ()) -> None:
        super().__init__(chan)
        self.dirs = dirs

    def map_path(self, path: bytes) -> bytes:
        """Every path-naming operation of asyncssh's server maps its paths here."""
        mapped = super().map_path(path)
        return confine(mapped, self.dirs) if self.dirs else mapped


class RunAsSFTPServer(ConfinedSFTPServer):
    """SFTP for the agent's run-as user (paths checked as that user, inside --file-dir)."""

    def __init__(self, chan: Any, account: Account, dirs: tuple[str, ...] = ()) -> None:
        super().__init__(chan, dirs)
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
    """SFTP on an agent that makes no file transfers: every request is refused, saying why."""

    def __init__(self, chan: Any, reason: str) -> None:
        super().__init__(chan)
        self.reason = reason

    async def scandir(self, path: bytes) -> AsyncIterator[asyncssh.SFTPName]:
        self.refuse()
        nothing: tuple[asyncssh.SFTPName, ...] = ()
        for name in nothing:  # an async generator like the base method's; never reached
            yield name

    def refuse(self, *_args: Any) -> Any:
        """Fail the request with the reason."""
        raise asyncssh.SFTPPermissionDenied(self.reason)


for _name in _PATH_OPS:
    setattr(NoFilesSFTPServer, _name, NoFilesSFTPServer.refuse)


def sftp_factory(policy: Policy) -> Any:
    """What the agent's SSH server uses for the `sftp` subsystem under its policy."""
    reason = policy.files_refusal()
    if reason is not None:
        return lambda chan: NoFilesSFTPServer(chan, reason)
    account, dirs = policy.run_as, policy.file_dirs
    if account is not None and account.uid != os.geteuid():
        return lambda chan: RunAsSFTPServer(chan, account, dirs)
    if dirs:
        return lambda chan: ConfinedSFTPServer(chan, dirs)
    return True  # asyncssh's own server, as the agent's user
