"""Console sign-in: argon2 password hashes, a signed session cookie and CSRF tokens."""

from __future__ import annotations

import asyncio
import functools
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from itsdangerous import BadSignature, URLSafeTimedSerializer
from starlette.requests import Request
from starlette.responses import Response

from easytask.errors import APIError, RateLimited
from easytask.store.models import User
from easytask.web.ratelimit import LoginLimiter, Reservation

if TYPE_CHECKING:
    from easytask.store.db import Store

COOKIE = "easytask_session"
CSRF_HEADER = "x-csrf-token"
CSRF_FIELD = "csrf"
SESSION_MAX_AGE = 12 * 3600
REVOCATION_RECHECK = 5.0  # seconds a "not logged out" answer from the store is trusted
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
ROLES = ("admin", "operator", "viewer", "auditor")

_hasher = PasswordHasher()


@functools.cache
def _dummy_hash() -> str:
    # Verified against when the user name is unknown, so a wrong name costs as much as a wrong
    # password. Made on first use, not at import: hashing is slow on purpose.
    return _hasher.hash(secrets.token_urlsafe(16))


def hash_password(password: str) -> str:
    """The argon2id hash of a password (slow on purpose: call it off the event loop)."""
    return _hasher.hash(password)


def verify_password(password_hash: str, password: str) -> bool:
    """True if the password matches the hash; an empty or malformed hash never matches."""
    try:
        return _hasher.verify(password_hash or _dummy_hash(), password) and bool(password_hash)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


async def ensure_admin_password(store: Store, state_dir: Path) -> None:
    """Give the admin user the password in STATE_DIR/admin.password if it has none yet."""
    path = state_dir / "admin.password"
    admin = await store.call(store.get_user, "admin")
    if admin is None or admin.password_hash or not path.exists():
        return
    password = path.read_text().strip()
    if password:
        await store.call(
            store.set_password_hash, "admin", await asyncio.to_thread(hash_password, password)
        )


@dataclass(frozen=True)
class Session:
    """What the signed cookie carries: a session id, its CSRF token and, once signed in, the user."""

    sid: str
    csrf: str
    uid: int | None = None
    pw: str = ""  # fingerprint of the password hash at sign-in: a new password ends old sessions


class SessionAuth:
    """Reads and writes session cookies and resolves them to users."""

    def __init__(self, store: Store, secret: bytes, max_age: int = SESSION_MAX_AGE) -> None:
        self.store = store
        self.max_age = max_age
        self._secret = secret
        self._signer = URLSafeTimedSerializer(secret, salt="easytask-session")
        self._users: dict[int, tuple[float, User | None]] = {}
        self._revoked: dict[str, float] = {}
        self.limiter = LoginLimiter(store)
        self._stored: dict[str, tuple[float, bool]] = {}  # sid -> (checked at, revoked)

    # -- cookies ----------------------------------------------------------------------------

    def read(self, request: Request) -> Session | None:
        """The request's session if its cookie is present, correctly signed and not too old."""
        cached = request.scope.get("easytask.session", False)
        if cached is not False:
            return cached
        session: Session | None = None
        raw = request.cookies.get(COOKIE)
        if raw:
            try:
                data: Any = self._signer.loads(raw, max_age=self.max_age)
                session = Session(
                    sid=str(data["s"]),
                    csrf=str(data["c"]),
                    uid=int(data["u"]) if data.get("u") is not None else None,
                    pw=str(data.get("p", "")),
                )
            except (BadSignature, KeyError, TypeError, ValueError):
                session = None
            if session is not None and session.sid in self._revoked:
                session = None
        request.scope["easytask.session"] = session
        return session

    def anonymous(self) -> Session:
        """A fresh session without a user (carries the login form's CSRF token)."""
        return Session(sid=secrets.token_urlsafe(18), csrf=secrets.token_urlsafe(24))

    def signed_in(self, user: User) -> Session:
        """A brand-new session for a user: new id and new CSRF token (no fixation)."""
        assert user.id is not None
        return Session(
            sid=secrets.token_urlsafe(18),
            csrf=secrets.token_urlsafe(24),
            uid=user.id,
            pw=self._fingerprint(user.password_hash),
        )

    def set_cookie(self, response: Response, request: Request, session: Session) -> None:
        """Send the session cookie: HttpOnly, SameSite=Lax, Secure over https."""
        value = self._signer.dumps(
            {"s": session.sid, "c": session.csrf, "u": session.uid, "p": session.pw}
        )
        response.set_cookie(
            COOKIE,
            value,
            max_age=self.max_age,
            path="/",
            httponly=True,
            samesite="lax",
            secure=request.url.scheme == "https",
        )

    def clear_cookie(self, response: Response, request: Request) -> None:
        """Remove the session cookie from the browser."""
        response.delete_cookie(
            COOKIE, path="/", httponly=True, samesite="lax", secure=request.url.scheme == "https"
        )

    async def revoke(self, session: Session) -> None:
        """Refuse this session id from now on (logout), even if its cookie is replayed.

        A signed-in session's end is stored, so it holds after a restart and on every server
        of the database; an anonymous one (the login form's) carries nothing worth storing.
        """
        now = time.time()
        self._revoked = {sid: t for sid, t in self._revoked.items() if t > now}
        self._revoked[session.sid] = now + self.max_age
        if session.uid is not None:
            expires = datetime.fromtimestamp(now + self.max_age, UTC)
            await self.store.call(self.store.revoke_session, session.sid, expires)

    def _fingerprint(self, password_hash: str) -> str:
        return hmac.new(self._secret, password_hash.encode(), hashlib.sha256).hexdigest()[:16]

    # -- users ------------------------------------------------------------------------------

    async def user(self, request: Request) -> User | None:
        """The signed-in user of a request, or None (anonymous, expired, disabled, new password)."""
        session = self.read(request)
        if session is None or session.uid is None:
            return None
        if await self._revoked_in_store(session.sid):
            return None
        now = time.monotonic()
        cached = self._users.get(session.uid)
        if cached is None or now - cached[0] > 5:
            user = await self.store.call(self.store.get_user_by_id, session.uid)
            if len(self._users) > 10000:
                self._users.clear()
            self._users[session.uid] = (now, user)
        else:
            user = cached[1]
        if user is None or user.disabled:
            return None
        if not hmac.compare_digest(session.pw, self._fingerprint(user.password_hash)):
            return None
        return user

    async def _revoked_in_store(self, sid: str) -> bool:
        # Asked again at most every few seconds per session: a logout on another server of the
        # same database takes effect here within that time (at once on this server).
        now = time.monotonic()
        cached = self._stored.get(sid)
        if cached is not None and now - cached[0] <= REVOCATION_RECHECK:
            return cached[1]
        revoked = await self.store.call(self.store.session_revoked, sid)
        if len(self._stored) > 10000:
            self._stored.clear()
        self._stored[sid] = (now, revoked)
        return revoked

    def forget_user(self, user_id: int | None) -> None:
        """Drop a cached user so a change (role, password) applies at once."""
        if user_id is not None:
            self._users.pop(user_id, None)

    async def api_user(self, request: Request) -> User | None:
        """The session user for an API call from the browser; a state change needs the CSRF header."""
        user = await self.user(request)
        if user is None:
            return None
        if request.method not in SAFE_METHODS:
            session = self.read(request)
            assert session is not None
            if not csrf_ok(session, request.headers.get(CSRF_HEADER)):
                raise APIError(
                    "CSRF token missing or invalid (send the X-CSRF-Token header)", status=403
                )
        return user

    async def login(self, name: str, password: str) -> User | None:
        """The user if name and password match an enabled account."""
        user = await self.store.call(self.store.get_user, name)
        ok = await asyncio.to_thread(verify_password, user.password_hash if user else "", password)
        if user is None or not ok or user.disabled:
            return None
        return user

    async def checked_login(self, name: str, password: str, address: str, source: str) -> User:
        """A sign-in with rate limiting and an audit record of every attempt.

        The attempt is counted in the store before the password is checked, so concurrent
        attempts never pass the limit together. Raises RateLimited (429) while the user name
        or the address has too many recent attempts, and APIError (401) for a wrong name or
        password.
        """
        store = self.store
        reserved = await self.limiter.reserve(name, address)
        if not isinstance(reserved, Reservation):
            await store.call(
                store.audit, name, "login.blocked", source, {"user": name, "retry_after": reserved}
            )
            raise RateLimited(reserved)
        user = await self.login(name, password)
        await store.call(
            store.audit, name, "login.ok" if user else "login.failed", source, {"user": name}
        )
        if user is None:
            raise APIError("wrong user name or password", status=401)
        await self.limiter.succeeded(reserved)
        return user


def csrf_ok(session: Session | None, token: str | None) -> bool:
    """True if the token sent with a request is the session's CSRF token."""
    if session is None or not token:
        return False
    return hmac.compare_digest(session.csrf.encode(), token.encode())
