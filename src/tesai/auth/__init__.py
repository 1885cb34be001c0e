"""Authentication: passwords, access/refresh tokens, API keys, wallet and OIDC sign-in."""
