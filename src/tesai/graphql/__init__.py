"""GraphQL at ``/graphql``: read models over the same services as REST.

REST (``/api/v1``) is the contract and the only way to change state; GraphQL lets a
dashboard read several domains in one round trip. Both call the same domain services and
use the same authentication (``Authorization: Bearer <jwt | tesai_…>`` or ``X-API-Key``).

Layout — one module per domain, each exporting a ``Query`` type with that domain's fields::

    graphql/
      __init__.py   mount_graphql(app)
      schema.py     merges every domain's Query; depth, token and alias limits
      context.py    GraphQLContext: request, unit of work (db()), principal (or None)
      errors.py     AppError → GraphQL error with ``extensions.code``; others masked
      accounts.py   me
      pool.py       pool (public statistics)
      scalars.py    MicroUsdc (money)

Adding a domain's read models:

1. Create ``graphql/<domain>.py`` with ``@strawberry.type`` output types (plain fields,
   built from the service's result by a ``<name>_type(...)`` function) and one
   ``@strawberry.type class Query`` whose fields are ``strawberry.field(resolver=...)``;
   resolvers take ``info: strawberry.Info[GraphQLContext, None]`` and call the domain's
   *service* inside ``async with info.context.db() as session:`` (resolvers of one query
   run concurrently; they take turns on the request's session) — no SQL here, no
   mutations (REST changes state).
2. Guard fields with ``info.context.require_user()`` or ``await
   info.context.require_role("provider")``: the same checks as REST, so a refusal is a
   GraphQL error whose ``extensions.code`` is the REST problem ``code`` (``unauthorized``,
   ``missing_role``…). Objects of other users are ``not_found``, as in REST.
3. Money is ``scalars.MicroUsdc`` (integer micro-USDC; GraphQL ``Int`` is only 32 bits).
4. Add the ``Query`` to ``DOMAIN_QUERIES`` in ``schema.py``; bound every list (a ``limit``
   argument with a maximum) and test the fields in ``tests/graphql/``.

Malformed requests (no query, bad JSON) get a 400 problem+json like REST; an invalid or too
deep/large query gets GraphQL errors (never a 500).
"""

from tesai.graphql.schema import mount_graphql

__all__ = ["mount_graphql"]
