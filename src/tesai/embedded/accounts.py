"""The local administrator of an embedded installation.

On first start `tesai up` creates one user who is admin, provider (the local agent's device
belongs to it) and customer, so one login reaches every area. Its password is the one given
(``--admin-password`` / ``TESAI_ADMIN_PASSWORD``) or a random one, printed once and kept in
``TESAI_HOME/admin-password`` (0600) so the owner of this machine can read it again.
"""

from __future__ import annotations

import os
import secrets
import uuid
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncSession

from tesai.accounts.service import create_user, get_user_by_email, normalize_email
from tesai.auth.passwords import hash_password

DEFAULT_ADMIN_EMAIL = "admin@example.com"
PASSWORD_FILE = "admin-password"  # noqa: S105 - a file name


@dataclass(frozen=True)
class LocalAdmin:
    user_id: uuid.UUID
    email: str
    created: bool
    """True when this start created the account."""
    password: str | None
    """Set when this start created the account or changed its password."""
    password_file: Path | None
    """Where the generated first password is kept, if it was generated."""


def _write_secret(path: Path, value: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(value + "\n")
    path.chmod(0o600)


async def ensure_local_admin(
    session: AsyncSession, home: Path, *, email: str, password: str | None
) -> LocalAdmin:
    """Create the local admin when absent; when ``password`` is given for an existing
    account, set it (the owner of the machine asked for it). Flushes, does not commit."""
    email = normalize_email(email)
    password_file = home / PASSWORD_FILE
    user = await get_user_by_email(session, email)
    if user is None:
        generated = password is None
        password = password or secrets.token_urlsafe(16)
        user = await create_user(
            session,
            email=email,
            password_hash=await hash_password(password),
            roles=("customer", "provider", "admin"),
            display_name="Local administrator",
        )
        if generated:
            _write_secret(password_file, password)
        return LocalAdmin(user.id, email, True, password, password_file if generated else None)
    if password is not None:
        user.password_hash = await hash_password(password)
        await session.flush()
        password_file.unlink(missing_ok=True)
        return LocalAdmin(user.id, email, False, password, None)
    return LocalAdmin(
        user.id, email, False, None, password_file if password_file.exists() else None
    )
