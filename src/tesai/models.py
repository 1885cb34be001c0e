"""Imports every table so ``Base.metadata`` is complete (Alembic, tests)."""

from tesai.accounts import models as accounts_models  # noqa: F401
from tesai.analytics import models as analytics_models  # noqa: F401
from tesai.audit import models as audit_models  # noqa: F401
from tesai.auth import models as auth_models  # noqa: F401
from tesai.billing import models as billing_models  # noqa: F401
from tesai.clusters import models as clusters_models  # noqa: F401
from tesai.db import Base
from tesai.devices import models as devices_models  # noqa: F401
from tesai.notifications import models as notifications_models  # noqa: F401
from tesai.ops import models as ops_models  # noqa: F401
from tesai.payments import models as payments_models  # noqa: F401

metadata = Base.metadata
