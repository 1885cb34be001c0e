"""Request and response bodies of the auth API."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, EmailStr, Field

from tesai.accounts.models import User

SignupRole = Literal["customer", "provider"]


class SignupRequest(BaseModel):
    email: EmailStr
    password: str = Field(min_length=10, max_length=256)
    roles: list[SignupRole] = Field(default=["customer"], min_length=1)


class LoginRequest(BaseModel):
    email: EmailStr
    password: str = Field(min_length=1, max_length=256)


class RefreshRequest(BaseModel):
    refresh_token: str = Field(min_length=1, max_length=256)


class LogoutRequest(BaseModel):
    refresh_token: str | None = Field(default=None, min_length=1, max_length=256)


class TokenResponse(BaseModel):
    access_token: str
    refresh_token: str
    token_type: Literal["bearer"] = "bearer"  # noqa: S105 - the OAuth2 token type
    expires_in: int
    """Seconds the access token is valid."""


class UserOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    email: str | None
    display_name: str
    roles: list[str]
    is_active: bool
    created_at: datetime | None

    @classmethod
    def of(cls, user: User) -> UserOut:
        return cls(
            id=user.id,
            email=user.email,
            display_name=user.display_name,
            roles=user.roles,
            is_active=user.is_active,
            created_at=user.created_at,
        )


class ApiKeyCreate(BaseModel):
    name: str = Field(default="", max_length=120, pattern=r"^[^\x00-\x1f]*$")
    scopes: list[str] = Field(min_length=1, max_length=16)


class ApiKeyOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    name: str
    prefix: str
    scopes: list[str]
    created_at: datetime | None
    last_used_at: datetime | None
    revoked_at: datetime | None


class ApiKeyCreated(ApiKeyOut):
    key: str
    """The whole key. Shown only in this response; store it now."""


class WalletNonceRequest(BaseModel):
    address: str = Field(min_length=32, max_length=44)


class WalletNonceResponse(BaseModel):
    nonce: str
    message: str
    expires_at: datetime


class WalletVerifyRequest(BaseModel):
    message: str = Field(min_length=1, max_length=2048)
    signature: str = Field(min_length=1, max_length=128)
    """Base58 Ed25519 signature of the UTF-8 message."""


class WalletOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    address: str
    created_at: datetime | None
