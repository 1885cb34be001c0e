"""Errors of the auth domain (each renders as problem+json with its ``code``)."""

from __future__ import annotations

from tesai.errors import (
    BadRequest,
    Conflict,
    Forbidden,
    NotFound,
    Overloaded,
    RateLimited,
    ServiceUnavailable,
    TokenInvalid,
    Unauthorized,
)


class InvalidCredentials(Unauthorized):
    code = "invalid_credentials"


class LoginThrottled(RateLimited):
    """Too many password tries from this address or at this account (``auth.throttle``)."""

    code = "login_throttled"


class PasswordCheckBusy(Overloaded):
    """This process's password hashing is saturated (``auth.passwords.HashGate``)."""

    code = "password_check_busy"


class RefreshTokenInvalid(TokenInvalid):
    code = "refresh_token_invalid"


class RefreshTokenReused(TokenInvalid):
    code = "refresh_token_reused"


class ApiKeyInvalid(Unauthorized):
    code = "api_key_invalid"


class ApiKeyNotFound(NotFound):
    code = "api_key_not_found"


class MissingRole(Forbidden):
    code = "missing_role"


class MissingScope(Forbidden):
    code = "missing_scope"


class WalletSignInFailed(Unauthorized):
    code = "wallet_sign_in_failed"


class WalletAlreadyLinked(Conflict):
    code = "wallet_already_linked"


class InvalidWalletAddress(BadRequest):
    code = "invalid_wallet_address"


class UnknownOidcProvider(NotFound):
    code = "oidc_provider_unknown"


class OidcLoginFailed(Unauthorized):
    code = "oidc_login_failed"


class OidcProviderUnavailable(ServiceUnavailable):
    code = "oidc_provider_unavailable"


class InvalidReturnTo(BadRequest):
    code = "invalid_return_to"
