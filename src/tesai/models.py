"""Imports every table so ``Base.metadata`` is complete (Alembic, tests)."""

from tesai.accounts import models as accounts_models  # noqa: F401
from tesai.db import Base

metadata = Base.metadata
