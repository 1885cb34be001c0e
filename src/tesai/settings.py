"""Every tunable of the control plane, in one place.

Values come from the environment (prefix ``TESAI_``) or a ``.env`` file in the working
directory. A field left unset takes the embedded default: no ``database_url`` means the
control plane starts its own PostgreSQL under ``home``; no ``redis_url`` means an in-process
cache; no ``broker_url`` means background tasks run in-process on the same schedule.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from urllib.parse import urlsplit

import platformdirs
from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


def _default_home() -> Path:
    return Path(platformdirs.user_data_dir("tesai", appauthor=False))


class OIDCProvider(BaseSettings):
    """One OAuth2/OIDC identity provider users may log in with."""

    name: str
    issuer: str
    client_id: str
    client_secret: SecretStr = SecretStr("")
    scopes: str = "openid email profile"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="TESAI_", env_file=".env", env_nested_delimiter="__", extra="ignore"
    )

    # --- where things live -------------------------------------------------------------
    home: Path = Field(default_factory=_default_home)
    """State directory: embedded PostgreSQL data, signing keys, agent state (embedded mode)."""
    environment: str = "development"
    """`development`, `test` or `production`; production refuses embedded defaults."""

    # --- HTTP ----------------------------------------------------------------------------
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 2
    """Uvicorn worker processes for `tesai server`."""
    public_url: str = "http://127.0.0.1:8000"
    """The URL users and agents reach the control plane at (used in join commands, SIWS)."""
    forwarded_allow_ips: str | None = None
    """Addresses of the reverse proxies in front of the API whose ``X-Forwarded-For`` and
    ``X-Forwarded-Proto`` are believed (comma-separated IPs or networks, ``*`` for any;
    uvicorn's ``forwarded_allow_ips``). Unset: none is, and a client's address is its
    connection's, which rate limits and the address recorded for an agent's Ray head use."""
    dashboard_url: str | None = None
    """Origin where browsers open clusters' Ray dashboards (e.g. ``https://dash.example.com``,
    pointing at this server). It must differ from ``public_url``'s origin: a dashboard's
    pages come from a provider's machine and must never run on the console's origin. Unset:
    ``localhost`` ↔ ``127.0.0.1`` on a loopback ``public_url``; otherwise dashboards open only
    with a token from Ray tooling."""
    cors_origins: list[str] = Field(default_factory=list)
    """Origins allowed to call the API from a browser; empty allows none cross-origin."""
    max_body_bytes: int = 1_048_576
    """Requests with a larger body get 413."""

    # --- data ----------------------------------------------------------------------------
    database_url: str | None = None
    """postgresql+asyncpg://… ; unset starts an embedded PostgreSQL under `home`."""
    database_pool_size: int = 10
    database_max_overflow: int = 10
    redis_url: str | None = None
    """redis://… ; unset uses an in-process cache (single process only)."""
    redis_prefix: str = "tesai:"
    """Prefix of every Redis key, so deployments (and test runs) can share one server."""
    broker_url: str | None = None
    """amqp://… ; unset runs tasks in-process."""
    task_queue_prefix: str = "tesai"
    """Prefix of Celery queue names."""

    # --- auth ----------------------------------------------------------------------------
    jwt_private_key_file: Path | None = None
    """PEM Ed25519 private key for access tokens; unset generates one under `home`."""
    jwt_issuer: str = "tesai"
    jwt_audience: str = "tesai-api"
    access_token_ttl_s: int = 900
    refresh_token_ttl_s: int = 30 * 24 * 3600
    wallet_nonce_ttl_s: int = 300
    siws_domain: str = "127.0.0.1:8000"
    """Domain a Sign-In-With-Solana message must name."""
    siws_chain_id: str = "mainnet"
    oidc_providers: list[OIDCProvider] = Field(default_factory=list)
    oidc_redirect_base: str = "http://127.0.0.1:8000"
    """Base URL the OIDC provider redirects back to (…/api/v1/auth/oidc/{name}/callback)."""
    auth_cache_ttl_s: float = 30.0
    """How long a cached API-key lookup or user snapshot lives; revocations and role changes
    delete the entry at once, the TTL only bounds staleness after a lost invalidation."""
    auth_local_cache_ttl_s: float = 1.0
    """How long each API process also keeps an API-key lookup in its own memory (skipping
    the Redis round trip). A revocation takes effect at once in the process that handled it
    and within this many seconds in the others; 0 turns the local cache off."""
    api_key_scopes: list[str] = Field(
        default_factory=lambda: ["read", "write", "clusters", "billing", "devices", "admin"]
    )
    """Scopes an API key may be given."""
    oidc_state_ttl_s: int = 600
    """How long a started OIDC login may take before its state expires."""

    # --- abuse protection ----------------------------------------------------------------
    rate_limit_per_ip: float = 50.0
    """Sustained requests per second allowed from one IP address."""
    rate_limit_per_ip_burst: int = 200
    rate_limit_per_principal: float = 100.0
    """Sustained requests per second for one user, API key or device."""
    rate_limit_per_principal_burst: int = 400
    rate_limit_enabled: bool = True
    """Also turns the sign-in throttle below on and off."""
    login_rate_per_ip: float = 0.2
    """Password sign-ins per second one address may try, sustained (12 a minute); each
    try spends a token, whatever its outcome. Over it: 429 with Retry-After."""
    login_burst_per_ip: int = 20
    login_rate_per_account: float = 0.05
    """Password sign-ins per second one email may be tried at, from anywhere (3 a minute)."""
    login_burst_per_account: int = 10
    password_hash_concurrency: int = 0
    """argon2 computations (sign-in, sign-up) one host runs at once, all its API processes
    together (lock files under `home`), on threads of low CPU priority; 0: half the CPU
    cores, at least one."""
    password_hash_queue: int = 32
    """Password checks that may wait for a free slot in one API process; more → 503 with
    Retry-After (a storm of sign-ins is refused, not queued for minutes)."""

    # --- devices: joining, heartbeats, liveness, proof of compute ------------------------
    join_token_ttl_s: int = 3600
    """How long a device join token stays valid (at most one hour; single use)."""
    device_token_ttl_s: int = 24 * 3600
    """Lifetime of a device credential; agents are told to rotate within the last hour."""
    device_token_rotate_before_s: int = 3600
    """Heartbeat responses ask the agent to rotate when its credential expires this soon."""
    device_auth_local_cache_ttl_s: float = 1.0
    """How long each API process also keeps a device-credential lookup in memory; revocation
    applies at once in the process that did it and within this many seconds elsewhere."""
    device_token_renew_grace_s: int = 7 * 24 * 3600
    """An expired (never revoked) device token may still rotate itself this long after expiry,
    so an agent switched off for days rejoins without a new join token."""
    device_auth_cache_ttl_s: float = 30.0
    """How long a device-credential lookup is cached (rotation and revocation delete it)."""
    heartbeat_interval_s: float = 5.0
    """Interval agents are told to heartbeat at."""
    heartbeat_grace_intervals: float = 3.0
    """A device silent for this many intervals is marked offline by the sweeper."""
    sweep_interval_s: float = 1.0
    """How often the liveness sweeper runs."""
    storm_fraction: float = 0.5
    """If more than this share of tracked devices would go offline in one sweep, hold."""
    storm_min_devices: int = 10
    """Storm protection only applies when at least this many devices would go offline."""
    storm_grace_s: float = 120.0
    """A storm hold that lasts longer than this is treated as real and applied."""
    telemetry_ttl_s: float = 300.0
    """How long a device's latest telemetry is kept in the cache."""
    device_flush_interval_s: float = 60.0
    """How often per-minute uptime and telemetry rollups are flushed to PostgreSQL."""
    verification_interval_s: float = 6 * 3600
    """Online devices are re-verified (proof of compute) on average this often, at random
    times between half and one and a half intervals after their last accepted proof."""
    verification_timeout_s: float = 600.0
    """A verification challenge without a result after this long fails (`verification_timeout`)."""
    proof_matrix_n_cpu: int = 256
    """Matrix size of the CPU proof of compute (a power of two, 64 to 65536)."""
    proof_matrix_n_gpu: int = 32768
    """Largest matrix size of a GPU proof; smaller when half the declared GPU memory cannot hold
    its working set (about 20 bytes per entry)."""
    proof_iterations: int = 3
    """Rounds (matrix products) of a CPU proof; a GPU proof gets as many as its target time
    needs (`proof_gpu_target_s`)."""
    proof_max_rounds: int = 64
    """At most this many rounds per declared GPU."""
    proof_gpu_target_s: float = 2.0
    """Work of a GPU proof: what the declared model does in this long at `proof_gpu_efficiency`
    of its reference rate (`tesai.devices.gpu_reference`)."""
    proof_gpu_efficiency: float = 0.5
    """Share of its reference rate (TF32, else FP32) a GPU of the declared model reaches on the
    whole proof (products, committing, copies): the calibration's assumption."""
    proof_deadline_slack: float = 1.25
    """Deadline = slack × the expected time + `proof_latency_allowance_s`. Larger passes slower
    honest devices and lets closer lower-class GPUs through."""
    proof_latency_allowance_s: float = 0.5
    """Added to every deadline: the network (seed out, root back) and the agent's start-up."""
    proof_cpu_min_deadline_s: float = 5.0
    """A CPU device's deadline is at least this (busy shared hosts are slow, not lying)."""
    proof_sample_blocks: int = 24
    """Blocks the agent must open per proof (at least one per round)."""
    proof_checked_entries: int = 64
    """Entries the server recomputes per proof (O(n) each), spread over the opened blocks, at
    least two per block: a commitment to guesses passes with probability about 2^-64."""
    offence_review_count: int = 3
    """This many offences (failed proofs, failed canaries, nodes its agent reported that the
    control plane did not find: ``tesai.devices.reputation``) within `offence_review_window_s`
    disable a device until an admin reviews it (`offences_review`, or
    `proof_failures_review` when every one was a failed proof)."""
    offence_review_window_s: float = 7 * 24 * 3600
    price_min_micro: int = 10_000
    """Lowest price a provider may set per priced unit-hour (GPU-hour, or device-hour on CPU)."""
    price_max_micro: int = 100_000_000
    """Highest price a provider may set per priced unit-hour."""
    default_price_micro: int = 1_000_000
    """Price of a new device when the provider gives none (1 USDC per GPU-hour)."""
    bandwidth_probe_max_bytes: int = 16 * 1024 * 1024
    """Largest payload GET /api/v1/agent/bandwidth returns."""
    pool_stats_ttl_s: float = 5.0
    """How long the public pool statistics are cached."""

    # --- money: ledger, deposits, payouts -------------------------------------------------
    platform_fee_bps: int = 1000
    """Platform fee in basis points, added on top of the provider's price (1000 = 10 %)."""
    usdc_mint: str = "EPjFWdd5AufqSSqeM2qN1xzybapC8G4wEGGkZwyTDt1v"
    """Mint of the token customers pay in (mainnet USDC by default)."""
    usdc_decimals: int = 6
    treasury_owner: str = ""
    """Wallet that owns the treasury token account (informational; deposits go to the account)."""
    treasury_token_account: str = ""
    """Token account deposits are paid to (the Solana Pay recipient)."""
    hot_wallet_key_file: Path | None = None
    """JSON array of the 64-byte secret key (solana-keygen format) payouts are sent from."""
    hot_wallet_token_account: str = ""
    """Token account payouts are sent from; empty means the hot wallet's associated account."""
    min_payout_micro: int = 10_000_000
    """Smallest withdrawal a provider may request (10 USDC)."""
    solana_rpc_url: str = "https://api.mainnet-beta.solana.com"
    """Solana JSON-RPC endpoint for deposits and payouts."""
    solana_rpc_timeout_s: float = 10.0
    """Per request to ``solana_rpc_url``; a payout send with no answer by then is "outcome
    unknown" and settled from its signature status, never assumed to have failed."""
    solana_public_rpc_url: str = ""
    """Solana JSON-RPC endpoint the web console may call from the browser (a recent blockhash
    for "Pay with wallet"); it is public (``GET /api/v1/public/console``, the CSP's connect-src).
    Empty: ``solana_rpc_url`` if that is one of Solana's public endpoints, else none."""
    deposit_confirmation: str = "finalized"
    """Confirmation level a deposit must reach before it is credited: confirmed or finalized."""
    deposit_intent_ttl_s: int = 3600
    """How long a deposit intent is scanned for a transfer (late transfers: see grace)."""
    deposit_scan_grace_s: int = 24 * 3600
    """Expired intents are still scanned this long, so a late payment is never dropped."""
    deposit_scan_interval_s: float = 5.0
    """How often open deposit references are scanned on chain."""
    payout_confirm_timeout_s: int = 120
    """How long a sender holds a payout it is signing and sending; a sender that stopped is
    taken over after it (the outcome is then read from the chain, never sent again)."""
    payout_interval_s: float = 5.0
    """How often pending payouts are sent and confirmed."""
    payout_label: str = "TES AI"
    """Label shown in wallets for Solana Pay requests."""
    idempotency_retention_days: int = 7
    """Stored answers to money requests are kept at least this long for replays."""
    spend_guardrails_interval_s: float = 30.0
    """How often budgets and monthly spend caps are checked: 80 % / 95 % warnings stored,
    clusters of an account at its cap stopped (`spend_cap_reached`)."""

    # --- clusters: quotes, provisioning, self-healing, metering ---------------------------
    secret_box_key_file: Path | None = None
    """Key (32 bytes) sealing secrets the control plane reads back, e.g. clusters' Ray
    tokens; unset keeps one under `home`. Every API process must share it."""
    quote_ttl_s: int = 60
    """How long a quote holds its devices for the customer."""
    provisioning_deadline_s: int = 300
    """A cluster not running this long after creation fails and its hold is released."""
    cluster_reconcile_interval_s: float = 1.0
    """How often the cluster reconciler runs (node joins, health, replacements, budgets)."""
    metering_interval_s: float = 10.0
    """How often the metering tick accrues every running node's healthy seconds and settles
    the minutes that closed. A node is billed for a tick's interval when its device
    heartbeat is fresh at the tick, so this is also the grain of unbilled downtime."""
    settle_interval_s: float = 60.0
    """How often the sweep settles usage the tick could not (a node's last minute at its
    stop, a hold that could not pay) and stops clusters whose hold is exhausted."""
    max_replacements_per_hour: int = 5
    """Cap on node replacements per cluster per hour (no recovery storms)."""
    flap_exclusion_s: int = 900
    """A device lost from a cluster is not picked as a replacement for this long (except by
    the lost node's own slot once the device is back: its cluster gets it first)."""
    replacement_retry_s: float = 5.0
    """When no device was free for a lost node, its replacement is tried again after this
    long, twice that after the next failed try, and so on up to ``replacement_retry_max_s``
    (at once when the node's own device comes back)."""
    replacement_retry_max_s: float = 60.0
    """The longest wait between two replacement tries of a lost node."""
    autoscale_up_after_s: float = 30.0
    """Ray's unplaceable demand must persist this long before an autoscaled cluster grows."""
    autoscale_idle_timeout_s: float = 300.0
    """A worker idle this long is removed from an autoscaled cluster (never below min)."""
    ray_evidence_interval_s: float = 1.0
    """How often the control plane reads every live head's Ray node list (its own evidence
    that the cluster's nodes are alive: ``tesai.clusters.evidence``)."""
    ray_evidence_window_s: float = 15.0
    """How old the control plane's last sighting of a node in its head's Ray state may be
    for the node to count as alive and be billed. Past it the node is not billed and a
    running cluster turns ``degraded`` (``node_unverified``)."""
    ray_evidence_timeout_s: float = 5.0
    """Timeout of one read of a head's Ray node list."""
    canary_interval_s: float = 600.0
    """Mean time between two canary rounds of one running cluster (``tesai.clusters.canary``:
    a task pinned to each node must return a value only that run can produce). Each wait is
    drawn at random (exponential: when the next round comes cannot be told from the last),
    between a tenth and five times the mean; while a node of the cluster has failed, rounds
    come ten times as often, so a node that recovers is billed again soon."""
    canary_timeout_s: float = 60.0
    """How long a canary round's tasks have to answer once its driver runs on the head; the
    whole round, the job's start included, gets twice this. A node without an answer then
    fails the round (``canary_failed``): it is not billed until a later round passes."""
    ray_proxy_timeout_s: float = 60.0
    """Timeout of a request proxied to a cluster's Ray dashboard."""
    ray_upload_max_bytes: int = 100 * 1024 * 1024
    """Largest package (``ray job submit --working-dir``, ``py_modules``) uploaded through
    the Ray proxy (``PUT …/ray/api/packages/…``), streamed to the head, never held whole in
    memory. 100 MiB: the head's own dashboard accepts no larger request body."""
    ray_proxy_allow_internal_heads: bool = False
    """Development only: let the Ray proxy connect to heads on loopback, private and
    link-local addresses and the control plane's own networks (never the cloud metadata
    address). `tesai up` and the tests, where every node runs on this machine, set it; in
    production a head there is refused (``tesai.clusters.head_address``). It also lets a
    device whose agent connects over loopback run its Ray node at any address: otherwise a
    Ray node counts only at the address its agent connects from (``tesai.clusters.evidence``,
    ``node_address_mismatch``)."""
    ray_proxy_denied_networks: list[str] = Field(default_factory=list)
    """More networks (CIDR) the Ray proxy never connects to, beside the control plane's own
    interfaces' networks: e.g. its public addresses behind NAT."""
    sla_promised_uptime: float = Field(default=0.99, ge=0.0, le=1.0)
    """Uptime a provider promises unless an admin sets its own (operations SLA report)."""

    # --- logging -------------------------------------------------------------------------
    log_level: str = "INFO"
    log_json: bool = True

    # --- platform: observability, HTTP protection, task workers ---------------------------
    access_log: bool = True
    """One JSON line per HTTP request (method, path, status, duration, request id)."""
    content_security_policy: str | None = None
    """Overrides the built-in strict CSP of the console and API (tesai.middleware.DEFAULT_CSP)."""
    task_worker_concurrency: int = 2
    """Processes per `tesai tasks worker` (each runs one task at a time, one event loop)."""

    # --- monitoring: business metrics -----------------------------------------------------
    business_metrics_interval_s: float = 15.0
    """How often each API process refreshes the snapshot behind its business gauges
    (devices and clusters by state, settlement lag, task queue depth); 0 turns it off."""

    # --- embedded mode (`tesai up`) -------------------------------------------------------
    admin_email: str = "admin@example.com"
    """Email of the local administrator `tesai up` creates on first start."""
    admin_password: SecretStr | None = None
    """Its password; unset generates one, printed once and kept in `home`/admin-password."""

    @property
    def embedded_database(self) -> bool:
        return self.database_url is None

    @property
    def dashboard_host(self) -> str | None:
        """The ``Host`` header of requests on the dashboard origin (``host[:port]``)."""
        origin = self.dashboard_origin
        return origin.split("://", 1)[1] if origin else None

    @property
    def public_solana_rpc_url(self) -> str:
        """The RPC browsers may call: ``solana_public_rpc_url``, else ``solana_rpc_url`` only
        when it is one of Solana's public endpoints or this machine (a provider's URL often
        carries an API key in its path or query); else "" (no wallet payments)."""
        if self.solana_public_rpc_url:
            return self.solana_public_rpc_url
        url = urlsplit(self.solana_rpc_url)
        public = url.hostname in PUBLIC_SOLANA_RPC_HOSTS and not (url.username or url.query)
        return self.solana_rpc_url if public and url.path in ("", "/") else ""

    @property
    def dashboard_origin(self) -> str | None:
        """``scheme://host[:port]`` where Ray dashboards open, or None (see ``dashboard_url``)."""
        public = urlsplit(self.public_url)
        if self.dashboard_url:
            url = urlsplit(self.dashboard_url)
            origin = f"{url.scheme}://{url.netloc}".lower()
            return None if origin == f"{public.scheme}://{public.netloc}".lower() else origin
        twin = {"127.0.0.1": "localhost", "localhost": "127.0.0.1"}.get(public.hostname or "")
        if twin is None:
            return None
        port = f":{public.port}" if public.port else ""
        return f"{public.scheme}://{twin}{port}"


PUBLIC_SOLANA_RPC_HOSTS = frozenset(
    {
        "api.mainnet-beta.solana.com",
        "api.devnet.solana.com",
        "api.testnet.solana.com",
        "127.0.0.1",
        "localhost",
    }
)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
