"""The `tesai` command line.

Start-up cost: every call of `tesai` builds the whole command tree, so the command modules
import at their top only what that needs (typer, rich). What a command needs to run (the
HTTP client, the server, Celery, Ray, the database) is imported inside the command, so
`tesai --help` and a client command such as `tesai cluster list` never load the control
plane. These inner imports are there for start-up time, not to dodge import cycles;
``tests/test_cli_startup.py`` checks which modules a client command loads, and
``bench/cli_startup.py`` measures the time.
"""
