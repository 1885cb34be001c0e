"""Request and response bodies of the admin user API."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from tesai.auth.schemas import UserOut


class RolesUpdate(BaseModel):
    roles: list[Literal["customer", "provider", "admin"]] = Field(min_length=1, max_length=3)


class UserPage(BaseModel):
    items: list[UserOut]
    total: int
