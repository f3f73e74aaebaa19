"""asyncssh logs nothing it need not format, and everything when debug logging is on."""

from __future__ import annotations

import logging

import asyncssh
import pytest
from asyncssh import logging as ssh_logging

from easytask.transport import sshlog


class Loud:
    """An argument whose text is counted each time it is made."""

    made = 0

    def __str__(self) -> str:
        Loud.made += 1
        return "loud"


def test_messages_below_the_level_are_never_formatted(caplog: pytest.LogCaptureFixture) -> None:
    sshlog.install()
    sshlog.install()  # twice is once
    logger = ssh_logging.logger.get_child("conn")
    caplog.set_level(logging.INFO, logger="asyncssh")
    Loud.made = 0
    logger.debug1("not shown: %s", [Loud()])
    assert Loud.made == 0 and not caplog.records
    caplog.set_level(logging.DEBUG, logger="asyncssh")
    logger.debug1("shown: %s", [Loud()])
    assert Loud.made == 1
    assert [r.getMessage() for r in caplog.records] == ["shown: loud"]


def test_packets_are_logged_only_at_debug_level_3(caplog: pytest.LogCaptureFixture) -> None:
    """The packet log still works where asyncssh is asked for it."""
    sshlog.install()

    class Packets(asyncssh.packet.SSHPacketLogger):
        _handler_names = {94: "MSG_CHANNEL_DATA"}

        @property
        def logger(self) -> ssh_logging.SSHLogger:
            return ssh_logging.logger.get_child("conn")

    caplog.set_level(logging.DEBUG, logger="asyncssh")
    Packets().log_sent_packet(94, 1, b"hello")
    assert not caplog.records  # debug level 1 (the default): no packet log
    asyncssh.set_debug_level(3)
    try:
        Packets().log_sent_packet(94, 1, b"hello")
    finally:
        asyncssh.set_debug_level(1)
    (record,) = caplog.records
    assert record.getMessage().startswith("[pktid=1] Sent MSG_CHANNEL_DATA (94), 5 bytes")
