"""Errors of the operations domain::

NotFound (404)
└── NodeNotFound        node_not_found       no such node in that cluster
Conflict (409)
├── NodeNotMovable      node_not_movable     the node or its cluster is not running
└── NoReplacement       no_replacement       no free device matches the cluster's constraints
InvalidInput (422)
└── InvalidWindow       invalid_window       a report window that ends before it starts

Unknown devices and clusters raise the devices' and clusters' own 404s; a drain or undrain
from a state that does not allow it is the devices' ``device_status_conflict`` (409).
"""

from __future__ import annotations

from tesai.errors import Conflict, InvalidInput, NotFound


class NodeNotFound(NotFound):
    code = "node_not_found"


class NodeNotMovable(Conflict):
    code = "node_not_movable"


class NoReplacement(Conflict):
    code = "no_replacement"


class InvalidWindow(InvalidInput):
    code = "invalid_window"
