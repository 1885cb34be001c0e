"""Errors of the devices domain, each with its own stable ``code``::

Unauthorized (401)
├── DeviceTokenInvalid      device_token_invalid   unknown, revoked or not a device token
├── DeviceTokenExpired      device_token_expired
├── JoinTokenInvalid        join_token_invalid     no such join token
├── JoinTokenExpired        join_token_expired
└── JoinTokenUsed           join_token_used        a join token works once
NotFound (404)
├── DeviceNotFound          device_not_found       also another provider's device
└── ChallengeNotFound       challenge_not_found    also another device's challenge
Conflict (409)
├── DeviceBusy              device_busy            remove/disable while rented
├── StatusConflict          device_status_conflict the move is not allowed from this state
└── ChallengeClosed         challenge_closed       a result for a finished challenge
InvalidInput (422)
└── PriceOutOfBounds        price_out_of_bounds
"""

from __future__ import annotations

from tesai.errors import Conflict, Forbidden, InvalidInput, NotFound, Unauthorized


class DeviceTokenInvalid(Unauthorized):
    code = "device_token_invalid"


class DeviceTokenExpired(Unauthorized):
    code = "device_token_expired"


class JoinTokenInvalid(Unauthorized):
    code = "join_token_invalid"


class JoinTokenExpired(Unauthorized):
    code = "join_token_expired"


class JoinTokenUsed(Unauthorized):
    code = "join_token_used"


class DeviceNotFound(NotFound):
    code = "device_not_found"


class ChallengeNotFound(NotFound):
    code = "challenge_not_found"


class DeviceBusy(Conflict):
    code = "device_busy"


class StatusConflict(Conflict):
    code = "device_status_conflict"


class DisabledByAdmin(Forbidden):
    code = "disabled_by_admin"


class ChallengeClosed(Conflict):
    code = "challenge_closed"


class PriceOutOfBounds(InvalidInput):
    code = "price_out_of_bounds"
