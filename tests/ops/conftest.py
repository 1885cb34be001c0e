"""Operations tests reuse the cluster tests' pool and money fixtures."""

from tests.clusters.conftest import add_device, grant

__all__ = ["add_device", "grant"]
