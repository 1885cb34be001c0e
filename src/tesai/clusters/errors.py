"""Errors of the clusters domain."""

from __future__ import annotations

from tesai.errors import BadRequest, Conflict, Forbidden, NotFound


class ClusterNotFound(NotFound):
    code = "cluster_not_found"


class QuoteNotFound(NotFound):
    code = "quote_not_found"


class QuoteExpired(Conflict):
    code = "quote_expired"


class NoCapacity(Conflict):
    """The pool cannot meet the request now; ``detail`` says why in numbers."""

    code = "no_capacity"


class PoolChanged(NoCapacity):
    """The devices chosen kept being booked by other requests while placing (a lost race;
    asking again usually succeeds)."""


class InvalidClusterRequest(BadRequest):
    code = "invalid_cluster_request"


class ClusterNotActive(Conflict):
    code = "cluster_not_active"


class ClusterNotReady(Conflict):
    """The cluster's head is not up yet (proxy and jobs need it)."""

    code = "cluster_not_ready"


class CanaryJobProtected(Forbidden):
    """The control plane's own canary jobs (``tesai.clusters.canary``) are not the customer's
    to stop or delete: a stopped round would fail honest nodes and leave them unbilled."""

    code = "canary_job_protected"
