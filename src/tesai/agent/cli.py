"""The agent's command line: ``tesai agent --server URL --token T`` and ``tesai agent doctor``.

It lives in the agent package so ``python -m tesai.agent`` works on a host without the server's
dependencies; ``tesai.cli.agent`` mounts the same app under the ``tesai`` command.
"""

from __future__ import annotations

import logging
from pathlib import Path

import typer

# The agent's own modules (and asyncio) are imported inside the commands: `tesai --help`
# and every other `tesai` command build this app too (start-up cost, see tesai.cli).

app = typer.Typer(
    name="agent",
    help="Run the provider agent that joins this machine to a TES AI pool.",
    invoke_without_command=True,
    no_args_is_help=False,
)

ServerOption = typer.Option(
    None, "--server", envvar="TESAI_AGENT_SERVER", help="Control plane URL, e.g. https://tes.ai"
)
StateDirOption = typer.Option(
    None,
    "--state-dir",
    envvar="TESAI_AGENT_STATE_DIR",
    help="Where the device credential is kept (default: the user data dir, tesai-agent).",
)


@app.callback()
def agent(
    ctx: typer.Context,
    server: str | None = ServerOption,
    token: str | None = typer.Option(
        None,
        "--token",
        envvar="TESAI_AGENT_TOKEN",
        help="One-time join token (only needed until the agent has a credential).",
    ),
    state_dir: Path | None = StateDirOption,
    metrics_port: int = typer.Option(
        9400, "--metrics-port", envvar="TESAI_AGENT_METRICS_PORT", help="Local /metrics; 0: off."
    ),
    metrics_addr: str = typer.Option("0.0.0.0", "--metrics-addr", help="Address for /metrics."),
    dcgm_exporter_url: str | None = typer.Option(
        None,
        "--dcgm-exporter-url",
        envvar="TESAI_AGENT_DCGM_EXPORTER_URL",
        help="Relay this dcgm-exporter's metrics on /metrics (e.g. http://127.0.0.1:9400/metrics;"
        " 'auto': that address if an exporter answers there). Move --metrics-port off its port.",
    ),
    no_gpu_proof: bool = typer.Option(
        False, "--no-gpu-proof", help="Run proofs of compute on the CPU even with a GPU."
    ),
    log_level: str = typer.Option("INFO", "--log-level", envvar="TESAI_AGENT_LOG_LEVEL"),
) -> None:
    """Run the agent (``tesai agent --server URL --token T``); ``doctor`` checks the host."""
    if ctx.invoked_subcommand is not None:
        return
    import asyncio

    from tesai.agent.agent import AgentConfig, run_agent
    from tesai.agent.state import default_state_dir

    if not server:
        typer.echo("error: --server URL is required", err=True)
        raise typer.Exit(2)
    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per heartbeat is noise
    config = AgentConfig(
        server_url=server,
        join_token=token,
        state_dir=state_dir or default_state_dir(),
        metrics_port=metrics_port,
        metrics_addr=metrics_addr,
        dcgm_exporter_url=dcgm_exporter_url,
        use_gpu_proof=not no_gpu_proof,
    )
    code = asyncio.run(run_agent(config))
    raise typer.Exit(code)


@app.command()
def doctor(
    server: str | None = ServerOption,
    state_dir: Path | None = StateDirOption,
) -> None:
    """Check driver/NVML, Ray, ports, containers, connectivity, clock skew and the state dir."""
    from tesai.agent.doctor import run_checks
    from tesai.agent.state import default_state_dir

    checks = run_checks(server, state_dir or default_state_dir())
    colours = {"OK": typer.colors.GREEN, "WARN": typer.colors.YELLOW, "FAIL": typer.colors.RED}
    for check in checks:
        mark = typer.style(f"{check.outcome:<4}", fg=colours[check.outcome], bold=True)
        typer.echo(f"{mark} {check.name}: {check.detail}")
        if check.fix and check.outcome != "OK":
            typer.echo(f"     fix: {check.fix}")
    failed = [c for c in checks if c.outcome == "FAIL"]
    if failed:
        typer.echo(f"{len(failed)} check(s) failed.")
        raise typer.Exit(1)
    typer.echo("All checks passed.")
