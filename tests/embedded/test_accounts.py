"""The local administrator `tesai up` creates."""

from __future__ import annotations

import stat
from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncSession

from tesai.accounts.service import get_user_by_email
from tesai.auth.passwords import verify_password
from tesai.embedded.accounts import ensure_local_admin


async def test_first_start_creates_one_admin_with_a_private_password(
    session: AsyncSession, tmp_path: Path
) -> None:
    first = await ensure_local_admin(session, tmp_path, email="Admin@Example.com", password=None)
    assert first.created
    assert first.password is not None
    assert first.password_file is not None
    assert first.password_file.read_text().strip() == first.password
    assert stat.S_IMODE(first.password_file.stat().st_mode) == 0o600
    user = await get_user_by_email(session, "admin@example.com")
    assert user is not None
    assert set(user.roles) == {"customer", "provider", "admin"}
    assert await verify_password(user.password_hash, first.password)

    again = await ensure_local_admin(session, tmp_path, email="admin@example.com", password=None)
    assert (again.created, again.user_id, again.password) == (False, first.user_id, None)
    assert again.password_file == first.password_file


async def test_a_given_password_is_used_and_resets_an_existing_one(
    session: AsyncSession, tmp_path: Path
) -> None:
    mine = await ensure_local_admin(
        session, tmp_path, email="owner@example.com", password="my own secret"
    )
    assert mine.password_file is None
    assert not (tmp_path / "admin-password").exists(), "a chosen password is not written down"

    await ensure_local_admin(session, tmp_path, email="owner@example.com", password="a new one!")
    user = await get_user_by_email(session, "owner@example.com")
    assert user is not None
    assert await verify_password(user.password_hash, "a new one!")
    assert not await verify_password(user.password_hash, "my own secret")
