"""Money test fixtures are shared with tests/billing."""

from tests.billing.conftest import new_user

__all__ = ["new_user"]
