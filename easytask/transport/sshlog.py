"""asyncssh's debug logging, without the cost of messages nobody reads.

asyncssh turns the arguments of every debug message into text, and describes every packet it
sends or receives (name, size, payload), before the logger is asked whether that level is
enabled. With debug logging off, which is how EasyTask runs unless `--log-level debug`, that was
7-8% of the server's and the agents' CPU in a fan-out. `install()` asks first; with debug logging
on, asyncssh logs exactly as before.
"""

from __future__ import annotations

import logging
from typing import Any

from asyncssh import logging as ssh_logging
from asyncssh import packet as ssh_packet


def install() -> None:
    """Make asyncssh check the log level before it formats anything (idempotent)."""
    logger_cls: Any = ssh_logging.SSHLogger
    packets_cls: Any = ssh_packet.SSHPacketLogger
    if getattr(logger_cls, "_easytask_checks_level", False):
        return
    format_and_log = logger_cls.log
    describe_packet = packets_cls._log_packet

    def log(self: Any, level: int, msg: object, *args: Any, **kwargs: Any) -> None:
        if self.isEnabledFor(level):
            format_and_log(self, level, msg, *args, **kwargs)

    def log_packet(self: Any, *args: Any) -> None:
        # packets are logged at debug level 3 only (asyncssh.set_debug_level)
        if logger_cls._debug_level >= 3 and self.logger.isEnabledFor(logging.DEBUG):
            describe_packet(self, *args)

    logger_cls.log = log
    packets_cls._log_packet = log_packet
    logger_cls._easytask_checks_level = True
