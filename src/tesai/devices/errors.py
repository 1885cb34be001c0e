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
├── ChallengeClosed         challenge_closed       a result for a finished challenge
└── ProofOutOfOrder         proof_out_of_order     commit before start, reveal before
                                                   commit, a second different root
Gone (410)
└── ProofVersionUnsupported proof_version_unsupported  a proof-of-compute protocol retired
InvalidInput (422)
└── PriceOutOfBounds        price_out_of_bounds
ServiceUnavailable (503)
└── IntakeBusy              intake_busy            too many heartbeats at once; Retry-After
"""

from __future__ import annotations

from tesai.errors import (
    AppError,
    Conflict,
    Forbidden,
    InvalidInput,
    NotFound,
    ServiceUnavailable,
    Unauthorized,
)


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


class ProofOutOfOrder(Conflict):
    code = "proof_out_of_order"


class ProofVersionUnsupported(AppError):
    status = 410
    code = "proof_version_unsupported"


class PriceOutOfBounds(InvalidInput):
    code = "price_out_of_bounds"


class IntakeBusy(ServiceUnavailable):
    """This API process is handling as many heartbeats as it takes at once."""

    code = "intake_busy"

    def __init__(self, retry_after_s: int) -> None:
        super().__init__(
            f"Too many heartbeats at once; retry in {retry_after_s} s",
            headers={"Retry-After": str(retry_after_s)},
            retry_after=retry_after_s,
        )
