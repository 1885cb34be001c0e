"""Users and their roles."""

from __future__ import annotations

from sqlalchemy import Boolean, String
from sqlalchemy.orm import Mapped, mapped_column

from tesai.db import Base, CreatedAtMixin, IdMixin


class User(IdMixin, CreatedAtMixin, Base):
    """A person or organisation. One user may be customer and provider at once."""

    __tablename__ = "users"

    email: Mapped[str | None] = mapped_column(String(320), unique=True)
    """Lower-cased; absent for users who only ever signed in with a wallet."""
    password_hash: Mapped[str | None] = mapped_column(String(255))
    display_name: Mapped[str] = mapped_column(String(120), default="")
    is_customer: Mapped[bool] = mapped_column(Boolean, default=True)
    is_provider: Mapped[bool] = mapped_column(Boolean, default=False)
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    is_active: Mapped[bool] = mapped_column(Boolean, default=True)

    @property
    def roles(self) -> list[str]:
        return [
            role
            for role, on in (
                ("customer", self.is_customer),
                ("provider", self.is_provider),
                ("admin", self.is_admin),
            )
            if on
        ]
