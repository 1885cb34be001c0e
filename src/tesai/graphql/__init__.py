"""GraphQL at ``/graphql``: read models over the same services as REST.

REST (``/api/v1``) is the contract and the only way to change state; GraphQL lets a
dashboard read several domains in one round trip. Both call the same domain services and
use the same authentication (``Authorization: Bearer <jwt | tesai_…>`` or ``X-API-Key``).

Layout — one module per domain, each exporting a ``Query`` type with that domain's fields::

    graphql/
      __init__.py   mount_graphql(app)
      schema.py     merges every domain's Query; depth, token and alias limits
      context.py    GraphQLContext: request, unit-of-work session, principal (or None)
      errors.py     AppError → GraphQL error with ``extensions.code``; others masked
      accounts.py   me
      pool.py       pool (public statistics)

Adding a domain's read models:

1. Create ``graphql/<domain>.py`` with ``@strawberry.type`` output types (plain fields,
   built from service results by a ``from_…`` function) and one ``@strawberry.type class
   Query`` whose resolvers take ``info: Info`` and call the domain's *service* with
   ``info.context.session`` — never SQL here, never a mutation.
2. Guard each field with ``info.context.require_user()`` / ``require_role("provider")``;
   they raise the same ``Unauthorized``/``Forbidden`` as REST, reported as GraphQL errors
   whose ``extensions.code`` is the REST problem ``code``.
3. Add the ``Query`` to ``DOMAIN_QUERIES`` in ``schema.py``.
4. Keep lists bounded (a ``limit`` argument with a maximum), and test the fields in
   ``tests/graphql/``.

Malformed requests (no query, bad JSON) get a 400 problem+json like REST; an invalid or too
deep/large query gets GraphQL errors (never a 500).
"""

from tesai.graphql.schema import mount_graphql

__all__ = ["mount_graphql"]
