"""Credentials that belong to a user: refresh tokens, API keys, wallets, OIDC identities."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import ARRAY, ForeignKey, Index, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from tesai.db import Base, CreatedAtMixin, IdMixin


class RefreshToken(IdMixin, CreatedAtMixin, Base):
    """One opaque refresh token (stored as SHA-256). Tokens rotated from one login share
    a ``family_id``; presenting an already-used token revokes the whole family."""

    __tablename__ = "refresh_tokens"
    __table_args__ = (Index("ix_refresh_tokens_family_id", "family_id"),)

    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    family_id: Mapped[uuid.UUID]
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    expires_at: Mapped[datetime]
    used_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]


class ApiKey(IdMixin, CreatedAtMixin, Base):
    """A scoped API key ``tesai_<prefix>_<secret>``; only its SHA-256 is kept."""

    __tablename__ = "api_keys"

    user_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), index=True
    )
    name: Mapped[str] = mapped_column(String(120), default="")
    prefix: Mapped[str] = mapped_column(String(16), unique=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    scopes: Mapped[list[str]] = mapped_column(ARRAY(String(32)))
    last_used_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]


class UserWallet(IdMixin, CreatedAtMixin, Base):
    """A Solana wallet address proven (by signature) to belong to a user."""

    __tablename__ = "user_wallets"

    user_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), index=True
    )
    address: Mapped[str] = mapped_column(String(64), unique=True)


class OidcIdentity(IdMixin, CreatedAtMixin, Base):
    """A user's account at an external OIDC provider, keyed by (provider, subject)."""

    __tablename__ = "oidc_identities"
    __table_args__ = (UniqueConstraint("provider", "subject"),)

    user_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), index=True
    )
    provider: Mapped[str] = mapped_column(String(64))
    subject: Mapped[str] = mapped_column(String(255))
    email: Mapped[str | None] = mapped_column(String(320))
