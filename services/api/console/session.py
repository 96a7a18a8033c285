"""The console's session: an API key exchanged once for a signed, expiring cookie, and its CSRF token.

The cookie holds the key's name, a keyed fingerprint of its token and a random
CSRF token, signed with a secret derived from the configured tokens. It never
holds the token itself; a key removed from ``API_KEYS`` or given a new token
ends every session made with it, since the fingerprint no longer matches.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

import falcon
from itsdangerous import BadSignature, URLSafeTimedSerializer

from shared.settings import ApiKey

COOKIE = "jobrelay_console"
#: The cookie (and the signature inside it) is good for a working day.
SESSION_MAX_AGE_S = 8 * 3600
_SALT = "jobrelay-console-session"


@dataclass(frozen=True)
class Viewer:
    """Who is looking: the key's name (safe to show), its scopes and the session's CSRF token."""

    name: str
    scopes: frozenset[str]
    csrf: str

    def allows(self, scope: str) -> bool:
        return "admin" in self.scopes or scope in self.scopes

    @property
    def scope_label(self) -> str:
        return "admin" if "admin" in self.scopes else "+".join(s for s in ("read", "write") if s in self.scopes)


def request_is_tls(req: falcon.Request) -> bool:
    """Whether the browser reached us over TLS: directly, or through a proxy saying so."""
    forwarded = (req.get_header("X-Forwarded-Proto") or "").split(",")[0].strip().lower()
    return req.scheme == "https" or forwarded == "https"


class Sessions:
    """Issue, read and end console sessions for the keys of ``API_KEYS`` (or anyone, with auth off)."""

    def __init__(self, keys: tuple[ApiKey, ...], *, auth: bool) -> None:
        self.keys = keys
        self.auth = auth
        # NOTE: derived from the tokens, so every gunicorn worker signs alike with no new setting,
        # and changing the keys ends the sessions made with the old ones.
        # With auth off there is no secret to derive it from, and nothing to protect by it: anyone may
        # open a session; the CSRF token inside still differs per session.
        material = "\n".join(sorted(key.token for key in keys)).encode() if auth else b"open"
        self.secret = hmac.new(b"jobrelay-console", material, hashlib.sha256).hexdigest()
        self.serializer = URLSafeTimedSerializer(self.secret, salt=_SALT)

    def _fingerprint(self, token: str) -> str:
        return hmac.new(self.secret.encode(), token.encode(), hashlib.sha256).hexdigest()[:32]

    def authenticate(self, presented: str) -> ApiKey | None:
        """The key whose token is ``presented``, compared in constant time against every key."""
        match = None
        for key in self.keys:
            if hmac.compare_digest(presented.encode(), key.token.encode()):
                match = key
        return match

    def start(self, req: falcon.Request, resp: falcon.Response, key: ApiKey | None) -> None:
        """Set the session cookie for ``key`` (None: auth is off, the console is open)."""
        payload = {
            "n": key.name if key else "anonymous",
            "f": self._fingerprint(key.token) if key else "",
            "c": secrets.token_urlsafe(24),
        }
        resp.set_cookie(
            COOKIE,
            self.serializer.dumps(payload),
            max_age=SESSION_MAX_AGE_S,
            path="/console",
            secure=request_is_tls(req),
            http_only=True,
            same_site="Strict",
        )

    @staticmethod
    def end(req: falcon.Request, resp: falcon.Response) -> None:
        resp.unset_cookie(COOKIE, path="/console", same_site="Strict")

    def viewer(self, req: falcon.Request) -> Viewer | None:
        """The session's viewer, or None when there is no valid, unexpired session for a current key."""
        raw = req.cookies.get(COOKIE)
        if not raw:
            return None
        try:
            payload = self.serializer.loads(raw, max_age=SESSION_MAX_AGE_S)
        except BadSignature:
            return None
        if not isinstance(payload, dict) or not isinstance(payload.get("c"), str):
            return None
        if not self.auth:
            return Viewer(name="anonymous", scopes=frozenset({"admin"}), csrf=payload["c"])
        for key in self.keys:
            if key.name == payload.get("n") and hmac.compare_digest(
                self._fingerprint(key.token), str(payload.get("f"))
            ):
                return Viewer(name=key.name, scopes=key.scopes, csrf=payload["c"])
        return None


def csrf_matches(viewer: Viewer, presented: str | None) -> bool:
    return bool(presented) and hmac.compare_digest(viewer.csrf.encode(), str(presented).encode())
