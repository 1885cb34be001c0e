"""Opening a cluster's Ray dashboard in a browser tab: a ticket, then a cookie.

A browser tab cannot send ``Authorization: Bearer``. So a signed-in customer asks for a
dashboard session (``POST /clusters/{id}/dashboard-session``) and gets a URL on the Ray proxy
carrying a *ticket*: a single-purpose JWT (JOSE ``typ`` below), bound to the user, their
login session and the cluster, valid 60 s and redeemable once. Opening it trades the ticket
for a *session cookie* (another single-purpose JWT) that is HttpOnly, SameSite=Strict,
Secure on https, scoped to ``Path=/api/v1/clusters/{id}/ray/`` and lives at most an hour and
never beyond the cluster's end, then moves on (a refresh, not a redirect: see the router) to
the same page without the ticket.

Those pages come from the head, on a provider's machine: they must never run on the console's
origin, where they could read a customer's tokens. So tickets, cookies and the dashboard's
pages live on a separate origin (``Settings.dashboard_origin``: ``dashboard_url``, or the
loopback twin ``localhost`` ↔ ``127.0.0.1`` of a local ``public_url``), on which the server
answers nothing but the Ray proxy (``tesai.middleware.DashboardOriginMiddleware``); the
proxy's answers on the console's origin carry ``Content-Security-Policy: sandbox``.

The cookie authenticates only reads (GET, HEAD) of that one cluster's proxy: the Ray
dashboard UI needs nothing else, and a cookie on writes would invite cross-site request
forgery on the Job Submission API, which keeps requiring the Authorization header. Logging
out ends the cookie too (it is checked against the session's revocation marker).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from tesai.auth.tokens import (
    DERIVED_SESSION_MAX_S,
    SigningKey,
    issue_purpose_token,
    verify_purpose_token,
)
from tesai.errors import Conflict, Forbidden, TokenInvalid
from tesai.settings import Settings

TICKET_TYP = "tesai-ray-ticket+jwt"
SESSION_TYP = "tesai-ray-session+jwt"
TICKET_TTL_S = 60
SESSION_TTL_S = DERIVED_SESSION_MAX_S
COOKIE_NAME = "tesai_ray_session"
READ_METHODS = frozenset({"GET", "HEAD"})


class DashboardSessionReadOnly(Forbidden):
    code = "dashboard_session_read_only"


class ApiKeyCannotOpenDashboard(Forbidden):
    code = "dashboard_needs_sign_in"


class DashboardOriginNotConfigured(Conflict):
    code = "dashboard_origin_not_configured"


def on_dashboard_origin(settings: Settings, host: str | None) -> bool:
    """Whether a request's ``Host`` header is the dashboard origin's."""
    return host is not None and settings.dashboard_host == host.lower()


@dataclass(frozen=True)
class DashboardClaims:
    user_id: uuid.UUID
    cluster_id: uuid.UUID
    family_id: uuid.UUID | None
    jti: str
    expires_at: int


def proxy_path(cluster_id: uuid.UUID) -> str:
    """The proxy's root for the cluster; also the cookie's ``Path``."""
    return f"/api/v1/clusters/{cluster_id}/ray/"


def session_expiry(now: int, cluster_ends_at: datetime | None) -> int:
    """When a cookie issued at ``now`` ends: an hour later, or when the cluster ends."""
    end = now + SESSION_TTL_S
    if cluster_ends_at is not None:
        end = min(end, int(cluster_ends_at.timestamp()))
    return end


def _issue(
    key: SigningKey,
    settings: Settings,
    typ: str,
    user_id: uuid.UUID,
    cluster_id: uuid.UUID,
    family_id: uuid.UUID | None,
    expires_at: int,
) -> str:
    extra = {"cid": str(cluster_id)}
    if family_id is not None:
        extra["sid"] = str(family_id)
    return issue_purpose_token(key, settings, typ, user_id, expires_at, **extra)


def _verify(
    key: SigningKey, settings: Settings, typ: str, token: str, cluster_id: uuid.UUID
) -> DashboardClaims:
    claims = verify_purpose_token(key, settings, typ, token)
    try:
        bound_to = uuid.UUID(str(claims.get("cid")))
        user_id = uuid.UUID(str(claims["sub"]))
        family_id = uuid.UUID(str(claims["sid"])) if "sid" in claims else None
    except ValueError as exc:
        raise TokenInvalid("Invalid dashboard credential") from exc
    if bound_to != cluster_id:
        raise TokenInvalid("This dashboard credential is for another cluster")
    return DashboardClaims(user_id, bound_to, family_id, str(claims["jti"]), int(claims["exp"]))


def issue_ticket(
    key: SigningKey,
    settings: Settings,
    user_id: uuid.UUID,
    cluster_id: uuid.UUID,
    family_id: uuid.UUID | None,
    now: int,
) -> str:
    return _issue(key, settings, TICKET_TYP, user_id, cluster_id, family_id, now + TICKET_TTL_S)


def verify_ticket(
    key: SigningKey, settings: Settings, token: str, cluster_id: uuid.UUID
) -> DashboardClaims:
    """Raises ``TokenInvalid`` for a forged, expired, other-purpose or other-cluster ticket."""
    return _verify(key, settings, TICKET_TYP, token, cluster_id)


def issue_session(
    key: SigningKey, settings: Settings, ticket: DashboardClaims, expires_at: int
) -> str:
    return _issue(
        key,
        settings,
        SESSION_TYP,
        ticket.user_id,
        ticket.cluster_id,
        ticket.family_id,
        expires_at,
    )


def verify_session(
    key: SigningKey, settings: Settings, token: str, cluster_id: uuid.UUID
) -> DashboardClaims:
    """Raises ``TokenInvalid`` for a forged, expired, other-purpose or other-cluster cookie."""
    return _verify(key, settings, SESSION_TYP, token, cluster_id)


def ticket_used_key(jti: str) -> str:
    return f"ray:ticket-used:{jti}"
