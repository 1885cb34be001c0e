import httpx
from tests.fixtures.auth import MakeUser

async def test_edges(client: httpx.AsyncClient, make_user: MakeUser) -> None:
    _, admin = await make_user(roles=("admin",))
    cases = [
        ("POST", "/api/v1/auth/signup", {"json": {"email": "a\x00b@example.com", "password": "x"*12}}),
        ("POST", "/api/v1/auth/login", {"json": {"email": "a\x00b@example.com", "password": "x\x00"}}),
        ("POST", "/api/v1/auth/login", {"json": {"email": "ab@example.com", "password": "x\x00"}}),
        ("POST", "/api/v1/auth/refresh", {"json": {"refresh_token": "\x00"}}),
        ("POST", "/api/v1/auth/logout", {"json": {"refresh_token": "\x00"}}),
        ("POST", "/api/v1/auth/wallet/nonce", {"json": {"address": "\x00"*40}}),
        ("POST", "/api/v1/auth/wallet/nonce", {"json": {"address": "é"*40}}),
        ("POST", "/api/v1/auth/wallet/verify", {"json": {"message": "\x00", "signature": "é\x00"}}),
        ("GET", "/api/v1/auth/oidc/\x00/login", {}),
        ("GET", "/api/v1/auth/oidc/x/callback", {"params": {"error": "\x00"}}),
        ("GET", "/api/v1/internal/audit", {"params": {"action": "\x00"}, "headers": admin}),
        ("GET", "/api/v1/internal/audit", {"params": {"since": "2020-01-01T00:00:00"}, "headers": admin}),
        ("GET", "/api/v1/internal/users", {"params": {"email": "\x00"}, "headers": admin}),
        ("POST", "/api/v1/auth/api-keys", {"json": {"name": "\x00", "scopes": ["read"]}, "headers": admin}),
        ("GET", "/api/v1/auth/me", {"headers": {"Authorization": "Bearer \x7f"}}),
        ("GET", "/api/v1/auth/me", {"headers": {"X-API-Key": "tesai_\x7f_x"}}),
        ("GET", "/api/v1/auth/me", {"headers": {"Authorization": "Basic abc"}}),
    ]
    for method, path, kw in cases:
        r = await client.request(method, path, **kw)
        print(method, path, r.status_code, r.text[:150])
        assert r.status_code < 500
