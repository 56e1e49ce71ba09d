"""The console's sign-in session and CSRF rules.

Signing in with an API token sets one cookie, `mh_session`: the token and a random CSRF value,
encrypted and authenticated with the server's secret key (`security/secretbox.py`, Fernet), so
the browser holds neither the token in clear nor anything it could forge. The cookie is
httponly (no script reads it), SameSite=Strict (no other site's page sends it) and scoped to
`/ui`. Every page resolves the token the way the API does (`web/auth.py`), so a revoked token
or a deleted user ends the session at the next click, on every server sharing the database.

Every state-changing form carries the session's CSRF value in a hidden `csrf_token` field
(the sign-in form carries a value from a short-lived cookie of its own); a POST without the
right one is refused with 403 before anything else is read.
"""

from __future__ import annotations

import hmac
import json
import secrets
import time
from dataclasses import dataclass
from urllib.parse import parse_qsl

from starlette.requests import Request
from starlette.responses import Response

from modelhost.security.secretbox import SecretBox

COOKIE = "mh_session"
LOGIN_COOKIE = "mh_login_csrf"
COOKIE_PATH = "/ui"
# A signed-in browser is asked for its token again after this long.
MAX_AGE_S = 12 * 3600
LOGIN_MAX_AGE_S = 3600
CSRF_FIELD = "csrf_token"


@dataclass(frozen=True)
class Session:
    token: str
    csrf: str
    issued_at: int


def new_session(token: str, now: float | None = None) -> Session:
    return Session(token, secrets.token_urlsafe(24), int(time.time() if now is None else now))


def seal(box: SecretBox, session: Session) -> str:
    payload = json.dumps({"t": session.token, "c": session.csrf, "i": session.issued_at})
    # Fernet's output is URL-safe base64: a valid cookie value as it is.
    return box.encrypt(payload).decode("ascii")


def unseal(box: SecretBox, value: str | None, now: float | None = None) -> Session | None:
    """The session in a cookie value; None when absent, forged, from another key, or old."""
    if not value:
        return None
    try:
        plain = box.decrypt(value.encode("ascii"))
    except (UnicodeEncodeError, ValueError):
        return None
    if plain is None:
        return None
    try:
        data = json.loads(plain)
        session = Session(str(data["t"]), str(data["c"]), int(data["i"]))
    except (ValueError, KeyError, TypeError):
        return None
    age = (time.time() if now is None else now) - session.issued_at
    if age < 0 or age > MAX_AGE_S:
        return None
    return session


def _secure(request: Request) -> bool:
    return request.url.scheme == "https"


def set_session(response: Response, request: Request, box: SecretBox, session: Session) -> None:
    response.set_cookie(
        COOKIE,
        seal(box, session),
        max_age=MAX_AGE_S,
        path=COOKIE_PATH,
        httponly=True,
        samesite="strict",
        secure=_secure(request),
    )
    response.delete_cookie(LOGIN_COOKIE, path=COOKIE_PATH)


def clear_session(response: Response) -> None:
    response.delete_cookie(COOKIE, path=COOKIE_PATH, httponly=True, samesite="strict")


def login_csrf(request: Request) -> str:
    """The sign-in form's CSRF value: the browser's current one, or a new one."""
    current = request.cookies.get(LOGIN_COOKIE, "")
    return current if len(current) >= 16 else secrets.token_urlsafe(24)


def set_login_csrf(response: Response, request: Request, value: str) -> None:
    response.set_cookie(
        LOGIN_COOKIE,
        value,
        max_age=LOGIN_MAX_AGE_S,
        path=COOKIE_PATH,
        httponly=True,
        samesite="strict",
        secure=_secure(request),
    )


def same(expected: str | None, given: str | None) -> bool:
    """Constant-time comparison; an empty or missing value never matches."""
    if not expected or not given:
        return False
    return hmac.compare_digest(expected.encode(), given.encode())


async def form_of(request: Request) -> dict[str, str]:
    """An `application/x-www-form-urlencoded` body as a dict (the last value of a repeated
    field wins); anything else reads as an empty form, which no CSRF check passes."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "application/x-www-form-urlencoded":
        return {}
    body = await request.body()
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return {}
    try:
        return dict(parse_qsl(text, keep_blank_values=True, max_num_fields=200))
    except ValueError:  # more fields than any console form has
        return {}
