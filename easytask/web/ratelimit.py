"""Sign-in attempts, counted per user name and per client address in a sliding window, in the
store: the count holds across restarts and is shared by every server of one database."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from easytask.store.db import Store

MAX_FAILURES = 5
WINDOW = 60.0


@dataclass(frozen=True)
class Reservation:
    """One sign-in's place under the limit: the stored attempts it counts as, and its user key."""

    user_key: str
    ids: list[int] = field(default_factory=list)


class LoginLimiter:
    """At most `limit` sign-in attempts per key within `window` seconds are ever checked.

    Keys are `user:NAME` and `addr:ADDRESS`; an attempt is refused when either key is at the
    limit, so guessing many passwords for one user or many users from one address both stop.
    The attempt is counted *before* the password is checked, so concurrent guesses cannot pass
    the check together; a correct password takes its attempt back and clears the user's count.
    """

    def __init__(self, store: Store, limit: int = MAX_FAILURES, window: float = WINDOW) -> None:
        self.store = store
        self.limit = limit
        self.window = window

    async def reserve(self, user: str, address: str) -> Reservation | int:
        """A reservation to check one password, or the seconds to wait before trying again."""
        user_key = f"user:{user.lower()}"
        store = self.store
        wait, ids = await store.call(
            store.reserve_login, [user_key, f"addr:{address}"], self.limit, self.window
        )
        if wait:
            return wait
        return Reservation(user_key, ids)

    async def succeeded(self, reservation: Reservation) -> None:
        """A correct password: its attempt does not count, and the user's failures are cleared
        (the address keeps its own)."""
        store = self.store
        await store.call(store.release_login, reservation.ids, [reservation.user_key])
