"""Customer commands: `tesai offers`, `tesai quote`, `tesai cluster …`, `tesai job …`.

All go through the HTTP API with the stored login (`tesai login`). Every listing takes
``--json``. The HTTP client is imported only once a command runs (start-up cost, see
tesai.cli).

The job commands that wait for a job (``--follow``, ``job stop``) exit with the job's outcome
(``JOB_EXIT``): 0 it succeeded, 1 it failed (or the command itself could not do its work:
the red line says which), 3 it was stopped; 2 is a usage error. With ``--follow`` stdout
carries only the job's output and what the CLI says about the job goes to stderr, so
``> out.log`` keeps the logs alone.
"""

from __future__ import annotations

import shlex
import sys
import time
import uuid
from typing import TYPE_CHECKING, Annotated, Any, TextIO

import typer
from rich.markup import escape
from rich.table import Table

from tesai.cli.common import console, dumps, err, fee_line, hardware, plural, rate_unit

if TYPE_CHECKING:
    from tesai.client import TesaiClient

cluster_app = typer.Typer(
    help="Rent, inspect, extend and terminate Ray clusters.", no_args_is_help=True
)
job_app = typer.Typer(help="Run Ray jobs on your clusters.", no_args_is_help=True)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON.")]
KeyOpt = Annotated[
    str | None,
    typer.Option("--idempotency-key", help="Reuse to retry a request safely (default: a new one)."),
]


def _key(given: str | None) -> dict[str, str]:
    """The ``Idempotency-Key`` header of a command that moves money: a retry of the request
    (the client's own after a refreshed login, or the command run again with the same
    ``--idempotency-key``) books once."""
    return {"Idempotency-Key": given or str(uuid.uuid4())}


def usd(micro: int | None) -> str:
    return "-" if micro is None else f"${micro / 1_000_000:,.2f}"


def _client() -> TesaiClient:
    # Imported here for start-up cost (see tesai.cli), not to dodge an import cycle.
    from tesai.client import NotLoggedIn, TesaiClient

    try:
        return TesaiClient()
    except NotLoggedIn as exc:
        err.print(f"[red]{exc}[/]")
        raise typer.Exit(1) from exc


def _call(fn: Any, *args: Any, **kwargs: Any) -> Any:
    import httpx

    from tesai.client import ApiError

    try:
        return fn(*args, **kwargs)
    except ApiError as exc:
        err.print(f"[red]{exc.status} {exc.code}[/]: {escape(exc.detail)}")
        raise typer.Exit(1) from exc
    except httpx.TransportError as exc:
        err.print(f"[red]Cannot reach the server:[/] {type(exc).__name__}: {escape(str(exc))}")
        raise typer.Exit(1) from exc


def _request(
    gpu_model: str | None,
    gpus: int,
    nodes: int | None,
    hours: float,
    max_price: float | None,
    region: list[str] | None,
    min_reliability: float,
    min_gpus: int | None,
    max_gpus: int | None,
) -> dict[str, Any]:
    req: dict[str, Any] = {
        "gpu_model": gpu_model,
        "duration_s": int(hours * 3600),
        "min_reliability": min_reliability,
    }
    if gpu_model:
        req["gpus"] = gpus
    else:
        req["nodes"] = nodes or 1
    if max_price is not None:
        req["max_price_per_gpu_hour_micro"] = int(max_price * 1_000_000)
    if region:
        req["regions"] = region
    if min_gpus is not None and max_gpus is not None:
        req["min_gpus"], req["max_gpus"] = min_gpus, max_gpus
    return req


GpuModel = Annotated[
    str | None,
    typer.Option("--gpu-model", "-m", help="e.g. 'NVIDIA H100 80GB HBM3'; omit for CPU."),
]
Gpus = Annotated[int, typer.Option("--gpus", "-g", help="GPUs in all.")]
Nodes = Annotated[int | None, typer.Option(help="CPU nodes (CPU clusters).")]
Hours = Annotated[float, typer.Option(help="Rental duration in hours.")]
MaxPrice = Annotated[
    float | None,
    typer.Option(help="Max listed price per GPU-hour (node-hour on CPU) in USD, before the fee."),
]
Region = Annotated[list[str] | None, typer.Option(help="Allowed regions; repeat for several.")]
MinRel = Annotated[float, typer.Option(help="Minimum reliability 0..1.")]


def offers(
    gpu_model: GpuModel = None,
    region: Annotated[str | None, typer.Option(help="Region.")] = None,
    max_price: MaxPrice = None,
    min_reliability: MinRel = 0.0,
    sort: Annotated[str, typer.Option(help="price, reliability or score.")] = "price",
    as_json: JsonOpt = False,
) -> None:
    """Bookable devices right now, with counts per GPU model (CPU apart) and the fee."""
    params: dict[str, Any] = {"sort": sort, "min_reliability": min_reliability}
    if gpu_model:
        params["gpu_model"] = gpu_model
    if region:
        params["region"] = region
    if max_price is not None:
        params["max_price_per_gpu_hour_micro"] = int(max_price * 1_000_000)
    with _client() as c:
        data = _call(c.get, "/api/v1/offers", params=params)
    if as_json:
        typer.echo(dumps(data))
        return
    groups = Table("hardware", "listed", "bookable now", "from (listed)", title="Pool")
    for g in data["groups"]:
        model, free = g["gpu_model"], g["bookable_devices"]
        groups.add_row(
            model or "CPU",
            plural(g["listed_devices"], "device"),
            f"{plural(g['bookable_gpus'], 'GPU')} on {plural(free, 'device')}"
            if model
            else plural(free, "CPU node"),
            _rate(g["min_price_per_gpu_hour_micro"], model),
        )
    console.print(groups)
    table = Table(
        "device", "hardware", "region", "listed price", "reliability", "score", title="Offers"
    )
    for o in data["offers"]:
        table.add_row(
            o["device_id"],
            hardware(o["gpu_model"], o["gpu_count"] if o["gpu_model"] else 1),
            o["region"],
            _rate(o["price_per_gpu_hour_micro"], o["gpu_model"]),
            f"{o['reliability']:.3f}",
            f"{o['verified_score']:.2f}",
        )
    console.print(table)
    if data.get("platform_fee_bps"):
        console.print(fee_line(data["platform_fee_bps"]))


def _rate(micro: int | None, gpu_model: str | None) -> str:
    return "-" if micro is None else f"{usd(micro)}/{rate_unit(gpu_model)}"


def quote(
    gpu_model: GpuModel = None,
    gpus: Gpus = 1,
    nodes: Nodes = None,
    hours: Hours = 1.0,
    max_price: MaxPrice = None,
    region: Region = None,
    min_reliability: MinRel = 0.0,
    as_json: JsonOpt = False,
) -> None:
    """Price a cluster and hold its devices for a minute."""
    req = _request(gpu_model, gpus, nodes, hours, max_price, region, min_reliability, None, None)
    with _client() as c:
        q = _call(c.post, "/api/v1/quotes", json=req)
    if as_json:
        typer.echo(dumps(q))
        return
    _print_quote(q)


def _print_quote(q: dict[str, Any]) -> None:
    where = q["region"] or "several regions"
    console.print(f"Quote [bold]{q['id']}[/] ({q['shape']}, {where}) until {q['expires_at']}")
    compute, fee = usd(q["hourly_micro"]), usd(q["hourly_fee_micro"])
    total = usd(q["hourly_total_micro"])
    console.print(f"  {compute}/h listed + {fee}/h platform fee = {total}/h")
    console.print(f"  hold for the whole duration: [bold]{usd(q['total_micro'])}[/]")
    for reason in q["reasons"]:
        console.print(f"  · {reason}")


@cluster_app.command("create")
def cluster_create(
    gpu_model: GpuModel = None,
    gpus: Gpus = 1,
    nodes: Nodes = None,
    hours: Hours = 1.0,
    max_price: MaxPrice = None,
    region: Region = None,
    min_reliability: MinRel = 0.0,
    name: Annotated[str, typer.Option(help="Cluster name.")] = "cluster",
    quote_id: Annotated[str | None, typer.Option("--quote", help="Book this quote.")] = None,
    budget: Annotated[float | None, typer.Option(help="Stop when this many USD are spent.")] = None,
    min_gpus: Annotated[int | None, typer.Option(help="Autoscale: at least.")] = None,
    max_gpus: Annotated[int | None, typer.Option(help="Autoscale: at most.")] = None,
    wait: Annotated[bool, typer.Option(help="Wait until it is running.")] = True,
    idempotency_key: KeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Rent a cluster (books the devices and holds the price of the whole duration)."""
    body: dict[str, Any] = {"name": name}
    if quote_id:
        body["quote_id"] = quote_id
    else:
        body["request"] = _request(
            gpu_model, gpus, nodes, hours, max_price, region, min_reliability, min_gpus, max_gpus
        )
    if budget is not None:
        body["budget_micro"] = int(budget * 1_000_000)
    with _client() as c:
        cluster = _call(c.post, "/api/v1/clusters", json=body, headers=_key(idempotency_key))
        if wait:
            cluster = _wait_running(c, cluster["id"], quiet=as_json)
    if as_json:
        typer.echo(dumps(cluster))
        return
    console.print(f"Cluster [bold]{cluster['id']}[/] is {cluster['status']}.")
    console.print(f"  tesai job submit --cluster {cluster['id']} -- python train.py")
    headers = '{"Authorization": "Bearer <your token>"}'
    console.print(f"  ray job submit --address {cluster['ray_address']} --headers '{headers}' -- …")


def _wait_running(
    c: TesaiClient, cluster_id: str, *, quiet: bool, timeout_s: float = 600
) -> dict[str, Any]:
    seen: set[str] = set()
    deadline = time.monotonic() + timeout_s
    with console.status("provisioning…", spinner="dots") if not quiet else _Null():
        while time.monotonic() < deadline:
            detail = _call(c.get, f"/api/v1/clusters/{cluster_id}")
            for e in detail["events"]:
                key = f"{e['at']}{e['reason']}"
                if key not in seen and not quiet:
                    console.print(f"  {e['at'][11:19]} {e['reason']}: {escape(e['message'])}")
                seen.add(key)
            if detail["status"] in ("running", "failed", "terminated"):
                return dict(detail)
            time.sleep(1.0)
    err.print("[yellow]Still provisioning; check `tesai cluster show`.[/]")
    return dict(detail)


class _Null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


@cluster_app.command("list")
def cluster_list(as_json: JsonOpt = False) -> None:
    """Your clusters."""
    with _client() as c:
        rows = _call(c.get, "/api/v1/clusters")
    if as_json:
        typer.echo(dumps(rows))
        return
    table = Table("id", "name", "status", "hardware", "listed $/h", "ends", title="Clusters")
    for r in rows:
        table.add_row(
            r["id"],
            r["name"],
            r["status"],
            hardware(r["gpu_model"], r["gpus"]),
            usd(r["hourly_price_micro"]),
            str(r["ends_at"] or "-"),
        )
    console.print(table)


@cluster_app.command("show")
def cluster_show(cluster_id: str, as_json: JsonOpt = False) -> None:
    """A cluster's nodes and its state timeline with reasons."""
    with _client() as c:
        d = _call(c.get, f"/api/v1/clusters/{cluster_id}")
    if as_json:
        typer.echo(dumps(d))
        return
    # Names and event messages are other people's text (Ray's log lines among them): never
    # markup.
    name, reason = escape(d["name"]), escape(d["status_reason"] or "")
    console.print(f"[bold]{name}[/] {d['id']}: {d['status']} ({reason})")
    console.print(f"  Ray address: {d['ray_address']}")
    nodes = Table("node", "device", "role", "state", "healthy s", title="Nodes")
    for n in d["nodes"]:
        nodes.add_row(n["id"], n["device_id"], n["role"], n["state"], str(n["healthy_seconds"]))
    console.print(nodes)
    events = Table("at", "reason", "message", title="Events")
    for e in d["events"]:
        events.add_row(e["at"], e["reason"], escape(e["message"]))
    console.print(events)


@cluster_app.command("extend")
def cluster_extend(
    cluster_id: str, hours: Hours = 1.0, idempotency_key: KeyOpt = None, as_json: JsonOpt = False
) -> None:
    """Add time (its price is added to the hold)."""
    with _client() as c:
        d = _call(
            c.post,
            f"/api/v1/clusters/{cluster_id}/extend",
            json={"duration_s": int(hours * 3600)},
            headers=_key(idempotency_key),
        )
    typer.echo(
        dumps(d)
        if as_json
        else f"{d['id']} now ends {d['ends_at'] or 'after provisioning + duration'}"
    )


@cluster_app.command("terminate")
def cluster_terminate(cluster_id: str, as_json: JsonOpt = False) -> None:
    """Stop now; unused time is returned."""
    with _client() as c:
        d = _call(c.post, f"/api/v1/clusters/{cluster_id}/terminate")
    typer.echo(dumps(d) if as_json else f"{d['id']} is {d['status']}")


JOB_EXIT = {"SUCCEEDED": 0, "FAILED": 1, "STOPPED": 3}
"""Exit status of a command that waited for a job, by the job's final status."""
DID_NOT_END = 1
"""Exit status when the job could not be followed to its end (its cluster ended first)."""
_CLUSTER_OVER = frozenset({"terminating", "terminated", "failed"})


def entrypoint_of(args: list[str]) -> str:
    """The shell command Ray runs for ``-- ARGS``.

    Each argument is quoted (``shlex.join``), so ``-- python -c "import ray; print(1)"``
    reaches the job's shell as typed. A single argument with whitespace in it is a shell
    command as given (``-- "python train.py > out.txt"``).
    """
    if len(args) == 1 and any(ch.isspace() for ch in args[0]):
        return args[0]
    return shlex.join(args)


@job_app.command(
    "submit", context_settings={"allow_extra_args": True, "ignore_unknown_options": True}
)
def job_submit(
    ctx: typer.Context,
    cluster: Annotated[str, typer.Option("--cluster", "-c", help="Cluster id.")],
    working_dir: Annotated[
        str | None, typer.Option(help="Upload this folder as the job's working dir.")
    ] = None,
    follow: Annotated[
        bool,
        typer.Option(help="Stream logs until the job ends; exit with its outcome (0, 1, 3)."),
    ] = False,
    max_retries: Annotated[
        int, typer.Option(min=0, max=10, help="Resubmit this often if the head node is lost.")
    ] = 0,
    as_json: JsonOpt = False,
) -> None:
    """Submit `-- COMMAND ARGS…` to the cluster.

    Each argument after -- is passed to the job as typed (quoted for its shell); one quoted argument with spaces is run as a shell command: -- "python train.py > out.txt".

    With --follow the job's output streams to stdout and the command exits with the job's outcome: 0 succeeded, 1 failed, 3 stopped (2: wrong usage). With --json it prints the job as JSON (with --follow: once it ended, the logs going to stderr).
    """  # noqa: E501 - typer re-wraps paragraphs; a line each keeps --help tidy
    entrypoint = entrypoint_of(ctx.args)
    if not entrypoint:
        err.print("[red]Give the entrypoint after --, e.g. `-- python train.py`[/]")
        raise typer.Exit(2)
    with _client() as c:
        runtime_env: dict[str, Any] | None = None
        if working_dir:
            runtime_env = _upload_working_dir(c, cluster, working_dir)
        job = _call(
            c.post,
            f"/api/v1/clusters/{cluster}/jobs",
            json={"entrypoint": entrypoint, "runtime_env": runtime_env, "max_retries": max_retries},
        )
        if not follow:
            if as_json:
                typer.echo(dumps(job))
            else:
                console.print(f"Job [bold]{job['id']}[/] submitted ({job['submission_id']}).")
                console.print(f"  tesai job logs {job['id']} --cluster {cluster} --follow")
            return
        err.print(f"Job [bold]{job['id']}[/] submitted ({job['submission_id']}); following it.")
        ended = _follow(c, cluster, job["id"], out=sys.stderr if as_json else sys.stdout)
    if as_json:
        typer.echo(dumps(ended))
    raise typer.Exit(_report_end(ended))


def _upload_working_dir(c: TesaiClient, cluster_id: str, working_dir: str) -> dict[str, Any]:
    """Upload the folder to the cluster through the proxy (Ray's own packaging)."""
    from ray.job_submission import JobSubmissionClient

    ray_client = JobSubmissionClient(
        f"{c.server}/api/v1/clusters/{cluster_id}/ray",
        headers={"Authorization": f"Bearer {c.token}"},
    )
    runtime_env: dict[str, Any] = {"working_dir": working_dir}
    ray_client._upload_working_dir_if_needed(runtime_env)
    return runtime_env


def _stream_logs(c: TesaiClient, cluster_id: str, job_id: str, *, skip: int, out: TextIO) -> int:
    """Write the job's logs from character ``skip`` on to ``out`` while the server streams
    them (until the job ends or its head stops answering); return the characters written."""
    written = 0
    path = f"/api/v1/clusters/{cluster_id}/jobs/{job_id}/logs"
    with c.stream("GET", path, params={"follow": "true"}, timeout=None) as r:
        for chunk in r.iter_text():
            if skip >= len(chunk):
                skip -= len(chunk)
                continue
            chunk, skip = chunk[skip:], 0
            out.write(chunk)
            out.flush()
            written += len(chunk)
    return written


def _logs_until_break(
    c: TesaiClient, cluster_id: str, job_id: str, *, skip: int, out: TextIO
) -> int:
    """``_stream_logs``, where a head that does not answer (409: not up yet, being re-formed
    or gone with its cluster) gives no logs instead of an error."""
    from tesai.client import ApiError

    try:
        return _stream_logs(c, cluster_id, job_id, skip=skip, out=out)
    except ApiError as exc:
        if exc.status == 409:
            return 0
        raise


def _follow(c: TesaiClient, cluster_id: str, job_id: str, *, out: TextIO) -> dict[str, Any]:
    """Stream the job's logs until it ends and return it as it ended.

    The server's stream also ends when the head stops answering; then the job is looked at
    again: a head being re-formed is waited for, a job resubmitted to a new head is followed
    from the start of its new logs, and when the cluster itself ends the job is returned as
    it was last seen (not ended).
    """
    path = f"/api/v1/clusters/{cluster_id}/jobs/{job_id}"
    submission, printed = None, 0
    try:
        while True:
            job: dict[str, Any] = _call(c.get, path)
            if job["submission_id"] != submission:
                if submission is not None:
                    err.print(
                        f"[yellow]Job {job_id} was resubmitted (attempt {job['attempts']}); "
                        "its logs start again.[/]"
                    )
                submission, printed = job["submission_id"], 0
            ended = job["status"] in JOB_EXIT
            printed += _call(_logs_until_break, c, cluster_id, job_id, skip=printed, out=out)
            if ended:
                return job
            job = _call(c.get, path)
            if job["status"] in JOB_EXIT:
                return job
            if _call(c.get, f"/api/v1/clusters/{cluster_id}")["status"] in _CLUSTER_OVER:
                return job
            time.sleep(2.0)
    except KeyboardInterrupt:
        err.print(
            f"\nStopped following; job {job_id} goes on "
            f"(`tesai job stop {job_id} --cluster {cluster_id}` stops it)."
        )
        raise typer.Exit(130) from None


def _report_end(job: dict[str, Any]) -> int:
    """Say on stderr how the job ended; return the exit status that goes with it."""
    # Ray's message quotes the job's last output: never read it as markup.
    status, message = job["status"], escape(job.get("message") or "")
    colour = {"SUCCEEDED": "green", "FAILED": "red", "STOPPED": "yellow"}.get(status)
    if colour is None:
        err.print(
            f"[red]Job {job['id']} did not end: it is {status} and its cluster is over.[/]"
            + (f" {message}" if message else "")
        )
        return DID_NOT_END
    err.print(f"[{colour}]Job {job['id']} {status}[/]" + (f": {message}" if message else ""))
    return JOB_EXIT[status]


@job_app.command("list")
def job_list(
    cluster: Annotated[str, typer.Option("--cluster", "-c")], as_json: JsonOpt = False
) -> None:
    """Every job on a cluster: submitted with TES AI (its id) or with Ray's own tooling
    (`ray job submit`: its Ray submission id, which `ray job …` commands take)."""
    with _client() as c:
        rows = _call(c.get, f"/api/v1/clusters/{cluster}/jobs")
    if as_json:
        typer.echo(dumps(rows))
        return
    table = Table("id", "via", "status", "entrypoint", "created", title="Jobs")
    for j in rows:
        table.add_row(
            j["id"] or j["submission_id"],
            j["submitted_via"],
            j["status"],
            j["entrypoint"][:60],
            j["created_at"],
        )
    console.print(table)


@job_app.command("status")
def job_status(
    job_id: str, cluster: Annotated[str, typer.Option("--cluster", "-c")], as_json: JsonOpt = False
) -> None:
    """A job's status and Ray's message about it."""
    with _client() as c:
        j = _call(c.get, f"/api/v1/clusters/{cluster}/jobs/{job_id}")
    typer.echo(dumps(j) if as_json else f"{j['id']}: {j['status']} {j['message'] or ''}")


@job_app.command("logs")
def job_logs(
    job_id: str,
    cluster: Annotated[str, typer.Option("--cluster", "-c")],
    follow: Annotated[
        bool,
        typer.Option(
            "--follow", "-f", help="Stream until the job ends; exit with its outcome (0, 1, 3)."
        ),
    ] = False,
) -> None:
    """A job's logs so far; with --follow, until it ends.

    With --follow the command exits with the job's outcome: 0 succeeded, 1 failed, 3 stopped (2: wrong usage); the final status goes to stderr.
    """  # noqa: E501 - typer re-wraps paragraphs; a line each keeps --help tidy
    with _client() as c:
        if follow:
            ended = _follow(c, cluster, job_id, out=sys.stdout)
        else:
            sys.stdout.write(_call(_logs_so_far, c, cluster, job_id))
            return
    raise typer.Exit(_report_end(ended))


def _logs_so_far(c: TesaiClient, cluster_id: str, job_id: str) -> str:
    with c.stream("GET", f"/api/v1/clusters/{cluster_id}/jobs/{job_id}/logs") as r:
        return r.read().decode(errors="replace")


@job_app.command("stop")
def job_stop(
    job_id: str,
    cluster: Annotated[str, typer.Option("--cluster", "-c")],
    wait: Annotated[
        float, typer.Option(min=0, help="Seconds to wait for the job to end (0: do not wait).")
    ] = 30.0,
    as_json: JsonOpt = False,
) -> None:
    """Stop a job and say how it ended.

    Exits 0 once the job has ended (stopped now, or it had ended before; with --wait 0 as soon as the stop is requested), 1 when it is still running after --wait seconds.
    """  # noqa: E501 - typer re-wraps paragraphs; a line each keeps --help tidy
    path = f"/api/v1/clusters/{cluster}/jobs/{job_id}"
    with _client() as c:
        before = _call(c.get, path)
        j = _call(c.post, f"{path}/stop")
        deadline = time.monotonic() + wait
        while j["status"] not in JOB_EXIT and time.monotonic() < deadline:
            time.sleep(0.5)
            j = _call(c.get, path)
    if as_json:
        typer.echo(dumps(j))
    elif before["status"] in JOB_EXIT:
        console.print(f"Job {j['id']} had already ended: {j['status']}.")
    elif j["status"] == "STOPPED":
        console.print(f"Job {j['id']} stopped (STOPPED).")
    elif j["status"] in JOB_EXIT:
        console.print(f"Job {j['id']} ended before it could be stopped: {j['status']}.")
    else:
        err.print(
            f"[yellow]Stop requested; job {j['id']} is still {j['status']}.[/] "
            f"`tesai job status {j['id']} --cluster {cluster}` shows when it ends."
        )
    raise typer.Exit(0 if j["status"] in JOB_EXIT or wait == 0 else 1)


def register(app: typer.Typer) -> None:
    app.command()(offers)
    app.command()(quote)
    app.add_typer(cluster_app, name="cluster")
    app.add_typer(job_app, name="job")
