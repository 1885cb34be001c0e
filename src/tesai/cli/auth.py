"""`tesai login`, `tesai logout` and `tesai admin …`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from tesai.cli.common import console, dumps, err

if TYPE_CHECKING:
    from tesai.settings import Settings

# The HTTP client, the settings and the database are imported inside the commands (start-up
# cost, see tesai.cli).

admin_app = typer.Typer(
    help="Administer this installation: create-user works on the database directly; the "
    "operations commands go through the API as a signed-in admin."
)

ROLE_CHOICES = ("customer", "provider", "admin")


async def _create_user(settings: Settings, email: str, password: str, roles: list[str]) -> str:
    from tesai.accounts import service as accounts
    from tesai.audit.service import record
    from tesai.auth.passwords import hash_password
    from tesai.runtime import open_runtime

    runtime = await open_runtime(settings, run_periodic=False)
    try:
        async with runtime.sessionmaker() as session, session.begin():
            user = await accounts.create_user(
                session, email=email, password_hash=await hash_password(password), roles=roles
            )
            await record(
                session,
                action="admin.user_created",
                actor_kind="system",
                subject_type="user",
                subject_id=user.id,
                details={"roles": user.roles, "via": "cli"},
            )
            return str(user.id)
    finally:
        await runtime.close()


@admin_app.command("create-user")
def create_user(
    email: Annotated[str, typer.Option(help="Email of the new user.")],
    password: Annotated[
        str,
        typer.Option(prompt=True, hide_input=True, confirmation_prompt=True, help="Password."),
    ],
    role: Annotated[
        list[str] | None,
        typer.Option(help="customer, provider or admin; repeat for several (default customer)."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Create a user directly in the database (TESAI_DATABASE_URL, else the embedded one)."""
    import asyncio

    from tesai.cli.server import _database
    from tesai.errors import AppError
    from tesai.settings import get_settings

    roles = role or ["customer"]
    unknown = sorted(set(roles) - set(ROLE_CHOICES))
    if unknown:
        err.print(f"[red]Unknown role(s):[/] {', '.join(unknown)}")
        raise typer.Exit(2)
    if len(password) < 10:
        err.print("[red]The password needs at least 10 characters.[/]")
        raise typer.Exit(2)
    settings = get_settings()
    with _database(settings) as url:
        try:
            user_id = asyncio.run(
                _create_user(
                    settings.model_copy(update={"database_url": url}), email, password, roles
                )
            )
        except AppError as exc:
            err.print(f"[red]{exc.message}[/]")
            raise typer.Exit(1) from exc
    if as_json:
        typer.echo(dumps({"id": user_id, "email": email.strip().lower(), "roles": roles}))
    else:
        console.print(f"created user {email} ({', '.join(roles)}) id={user_id}")


def login(
    server: Annotated[str, typer.Option(help="URL of the control plane.")] = (
        "http://127.0.0.1:8000"
    ),
    email: Annotated[str, typer.Option(prompt=True, help="Your email.")] = "",
    password: Annotated[
        str, typer.Option(prompt=True, hide_input=True, envvar="TESAI_PASSWORD")
    ] = "",
) -> None:
    """Log in and keep the tokens in your config dir (mode 0600)."""
    import httpx

    from tesai.client import ApiError, TesaiClient, credentials_path

    try:
        with TesaiClient(server, None) as client:
            client.login(email, password)
    except ApiError as exc:
        err.print(f"[red]Login failed:[/] {exc.detail}")
        raise typer.Exit(1) from exc
    except httpx.HTTPError as exc:
        err.print(f"[red]Cannot reach {server}:[/] {exc}")
        raise typer.Exit(1) from exc
    console.print(f"logged in to {server} as {email}; credentials in {credentials_path()}")


def logout() -> None:
    """End the session on the server and delete the stored credentials."""
    from tesai.client import TesaiClient, load_credentials

    if load_credentials() is None:
        console.print("not logged in")
        return
    with TesaiClient() as client:
        client.logout()
    console.print("logged out")


def register(app: typer.Typer) -> None:
    """Add these commands to the `tesai` CLI."""
    app.command()(login)
    app.command()(logout)
    app.add_typer(admin_app, name="admin")
