"""Database objects that SQLAlchemy models cannot express (triggers, functions).

Each domain that needs one adds its DDL here; the migration that creates the tables runs
``install_database_extras`` too, and tests call it after ``create_all``.
"""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

EXTRA_DDL: list[str] = []


async def install_database_extras(conn: AsyncConnection) -> None:
    for ddl in EXTRA_DDL:
        await conn.execute(text(ddl))
