"""Money under SIGKILL: the control plane's processes die at random moments while clusters
are metered and settled and providers are paid; then the books are checked.

Shared by ``tests/billing/test_process_kills.py`` (short runs) and ``bench/money_kills.py``
(long ones). One run, in one of two shapes:

- ``production``: ``tesai server`` (API), ``tesai tasks beat`` and ``tesai tasks worker``
  on RabbitMQ; the worker (metering, settlement, payouts) is SIGKILLed with its whole
  process group and started again.
- ``embedded``: ``tesai up --no-agent`` (API, tasks and cache in one process) is SIGKILLed
  with its whole process group and started again; heartbeats go unanswered meanwhile.

Around it, real parts that outlive those kills, as they would in production: PostgreSQL (a
scratch database), a Solana JSON-RPC endpoint over LiteSVM (``tests.fixtures.solana_rpc``,
which also plays a slow RPC node that answers after the client gave up), and two real
agents (CPU devices running real Ray). Two one-node clusters run while the provider asks
for payouts every few seconds.

After the run every cluster is terminated and the background work is let finish; then
``check`` asserts, from the database and the chain:

1. every ledger transaction sums to zero, and every balance equals its postings;
2. per node, billed seconds ≤ the seconds the control plane could have observed it
   healthy (its life, cut to the windows the observing process was up, each extended by
   the heartbeat grace), and the meter's total equals its buckets;
3. no (node, minute) is billed twice;
4. no usage is left unsettled while its hold has money;
5. the transfers that left the hot wallet on chain equal the ledger's paid payouts, one
   for one, and nothing is still in flight.
"""

from __future__ import annotations

import asyncio
import os
import random
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
from solders.keypair import Keypair

from tesai.agent.local import LocalAgentProcess, start_local_agent
from tesai.db import asyncpg_url
from tests.fixtures.processes import free_port
from tests.fixtures.solana_rpc import RpcChainProcess

REPO = Path(__file__).resolve().parents[2]
TESAI = str(Path(sys.executable).with_name("tesai"))
DATABASE_URL = os.environ.get(
    "TESAI_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
REDIS_URL = os.environ.get("TESAI_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
BROKER_URL = os.environ.get("TESAI_TEST_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672//")

HEARTBEAT_S = 1.0
RPC_TIMEOUT_S = 3.0
PRICE_MICRO = 3_600_000  # 3.6 USDC per hour: 1,000 micro-USDC per second


def _dsn(url: str) -> str:
    return asyncpg_url(url).replace("postgresql+asyncpg://", "postgresql://")


@dataclass
class Window:
    """When the process that observes heartbeats and meters was up."""

    start: float
    end: float | None = None


@dataclass
class Report:
    shape: str
    seconds: float
    kills: int = 0
    slow_rpc_sends: int = 0
    payouts_requested: int = 0
    payouts_paid: int = 0
    payouts_reversed: int = 0
    billed_seconds: dict[str, int] = field(default_factory=dict)
    bound_seconds: dict[str, float] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        return [
            f"shape {self.shape}: {self.seconds:.0f} s, {self.kills} SIGKILLs, "
            f"{self.slow_rpc_sends} payout rounds with a slow RPC",
            f"payouts: {self.payouts_requested} requested, {self.payouts_paid} paid, "
            f"{self.payouts_reversed} reversed",
            *(
                f"node {n[:8]}: billed {b} s ≤ observable {self.bound_seconds[n]:.1f} s"
                for n, b in self.billed_seconds.items()
            ),
            f"problems: {len(self.problems)}",
            *self.problems,
        ]


class KillRun:
    """One run; ``run()`` returns the report (its ``problems`` must be empty)."""

    def __init__(self, shape: str, *, seconds: float, seed: int, workdir: Path) -> None:
        assert shape in ("production", "embedded")
        self.shape = shape
        self.seconds = seconds
        self.rng = random.Random(seed)
        self.work = workdir
        self.report = Report(shape, seconds)
        self.db_name = f"tesai_kills_{secrets.token_hex(4)}"
        self.db_url = f"{DATABASE_URL.rpartition('/')[0]}/{self.db_name}"
        self.prefix = f"tesai-kills-{secrets.token_hex(3)}"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.chain = RpcChainProcess(workdir)
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.agents: list[LocalAgentProcess] = []
        self.temp_roots: list[Path] = []
        self.windows: list[Window] = []
        self.provider: dict[str, str] = {}
        self.customer: dict[str, str] = {}
        self.nodes: dict[str, tuple[float, float]] = {}  # node id -> (created, ended) bounds

    # --- processes -------------------------------------------------------------------------
    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("TESAI_")}
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        chain = self.chain.settings_update()
        env.update(
            TESAI_ENVIRONMENT="test",
            TESAI_HOME=str(self.work / "home"),
            TESAI_DATABASE_URL=self.db_url,
            TESAI_REDIS_URL=REDIS_URL,
            TESAI_REDIS_PREFIX=self.prefix + ":",
            TESAI_RATE_LIMIT_ENABLED="false",
            TESAI_LOG_JSON="false",
            TESAI_PUBLIC_URL=self.url,
            TESAI_HEARTBEAT_INTERVAL_S=str(HEARTBEAT_S),
            TESAI_PROOF_MATRIX_N_CPU="128",
            TESAI_PROOF_ITERATIONS="2",
            TESAI_PROVISIONING_DEADLINE_S="300",
            # The agents' Ray heads run on this machine: the control plane reads their Ray
            # state there (its evidence that the nodes are alive) as `tesai up` would.
            TESAI_RAY_PROXY_ALLOW_INTERNAL_HEADS="true",
            TESAI_METERING_INTERVAL_S="2",
            TESAI_SETTLE_INTERVAL_S="5",
            TESAI_PAYOUT_INTERVAL_S="1",
            TESAI_PAYOUT_CONFIRM_TIMEOUT_S="10",
            TESAI_MIN_PAYOUT_MICRO="1000",
            TESAI_SOLANA_RPC_URL=chain["solana_rpc_url"],
            TESAI_SOLANA_RPC_TIMEOUT_S=str(RPC_TIMEOUT_S),
            TESAI_USDC_MINT=chain["usdc_mint"],
            TESAI_TREASURY_OWNER=chain["treasury_owner"],
            TESAI_TREASURY_TOKEN_ACCOUNT=chain["treasury_token_account"],
            TESAI_HOT_WALLET_KEY_FILE=str(chain["hot_wallet_key_file"]),
            PYTHONPATH=str(REPO),
        )
        if self.shape == "production":
            env.update(TESAI_BROKER_URL=BROKER_URL, TESAI_TASK_QUEUE_PREFIX=self.prefix)
        return env

    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen[bytes]:
        log = (self.work / f"{name}.log").open("ab")
        proc = subprocess.Popen(
            [TESAI, *args],
            cwd=self.work,
            env=self.env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.procs[name] = proc
        return proc

    def _kill(self, name: str) -> None:
        proc = self.procs.pop(name, None)
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)

    def _wait_api(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/healthz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"the API did not answer: see {self.work}")

    def _start_metering_process(self) -> None:
        """Start the process that meters (and, embedded, observes heartbeats)."""
        if self.shape == "production":
            self._spawn("worker", ["tasks", "worker", "--concurrency", "1"])
            self.windows.append(Window(time.time()))
        else:
            self.windows.append(Window(time.time()))
            self._spawn(
                "up",
                ["up", "--no-agent", "--host", "127.0.0.1", "--port", str(self.port)],
            )
            self._wait_api()

    def _kill_metering_process(self) -> None:
        self._kill("worker" if self.shape == "production" else "up")
        self.windows[-1].end = time.time()
        self.report.kills += 1

    # --- set-up ----------------------------------------------------------------------------
    async def _database(self) -> None:
        admin = await asyncpg.connect(_dsn(DATABASE_URL))
        try:
            await admin.execute(f'CREATE DATABASE "{self.db_name}"')
        finally:
            await admin.close()

    async def _users(self) -> None:
        """A provider with a proved payout wallet and a customer with credit."""
        from tesai.accounts import service as accounts
        from tesai.auth.service import start_session
        from tesai.auth.tokens import runtime_signing_key
        from tesai.billing import service as billing
        from tesai.payments import payouts
        from tesai.runtime import open_runtime
        from tesai.settings import Settings

        settings = Settings(
            environment="test",
            database_url=self.db_url,
            redis_url=REDIS_URL,
            redis_prefix=self.prefix + ":",
            home=self.work / "home",
            **self.chain.settings_update(),
        )
        runtime = await open_runtime(settings, run_periodic=False)
        try:
            key = runtime_signing_key(runtime.state, runtime.settings)
            for role in ("provider", "customer"):
                async with runtime.sessionmaker.begin() as s:
                    user = await accounts.create_user(
                        s, email=f"{role}-{secrets.token_hex(3)}@kills.invalid", roles=(role,)
                    )
                    pair = await start_session(s, key, runtime.settings, user)
                    headers = {"Authorization": f"Bearer {pair.access_token}"}
                    if role == "customer":
                        await billing.admin_grant_credit(
                            s,
                            admin_user_id=None,
                            user_id=user.id,
                            amount_micro=1_000_000_000,
                            reason="kills",
                            idempotency_key=f"kills:{user.id}",
                        )
                        self.customer = headers
                        continue
                    self.provider = headers
                    wallet = Keypair()
                    self.chain.token_account(str(wallet.pubkey()))
                    nonce, message = await payouts.wallet_challenge(
                        runtime.cache, user.id, str(wallet.pubkey())
                    )
                    await payouts.register_wallet(
                        s,
                        runtime.cache,
                        runtime.settings,
                        user_id=user.id,
                        address=str(wallet.pubkey()),
                        nonce=nonce,
                        signature=str(wallet.sign_message(message.encode())),
                    )
        finally:
            await runtime.close()

    def _agents(self, n: int = 2) -> None:
        for i in range(n):
            r = httpx.post(
                self.url + "/api/v1/provider/devices",
                json={
                    "name": f"box{i}",
                    "region": "eu-west",
                    "country": "DE",
                    "price_per_gpu_hour_micro": PRICE_MICRO,
                },
                headers=self.provider,
                timeout=30,
            )
            r.raise_for_status()
            root = Path(tempfile.mkdtemp(prefix=f"kr{i}-", dir="/tmp"))
            self.temp_roots.append(root)
            low = 27000 + 500 * i
            self.agents.append(
                start_local_agent(
                    self.url,
                    self.work / f"agent{i}",
                    r.json()["join_token"],
                    log_file=self.work / f"agent{i}.log",
                    extra_env={
                        "TESAI_RAY_PORT_RANGE": f"{low}-{low + 499}",
                        "TESAI_RAY_NODE_IP": "127.0.0.1",
                        "TESAI_RAY_TEMP_ROOT": str(root),
                    },
                )
            )
        self._until(
            lambda: [
                d["status"]
                for d in httpx.get(
                    self.url + "/api/v1/provider/devices", headers=self.provider, timeout=10
                ).json()
            ],
            lambda states: len(states) == n and all(s == "online" for s in states),
            180,
            "agents online",
        )

    def _until(
        self, fetch: Callable[[], Any], ok: Callable[[Any], bool], timeout: float, what: str
    ) -> Any:
        deadline = time.monotonic() + timeout
        value: Any = None
        while time.monotonic() < deadline:
            try:
                value = fetch()
                if ok(value):
                    return value
            except (httpx.HTTPError, KeyError, ValueError):
                pass
            time.sleep(0.5)
        raise RuntimeError(f"timed out waiting for {what} (last: {value!r}); see {self.work}")

    def _clusters(self, n: int = 2) -> list[str]:
        ids = []
        for i in range(n):
            created = time.time()
            r = httpx.post(
                self.url + "/api/v1/clusters",
                json={"name": f"kills{i}", "request": {"nodes": 1, "duration_s": 3600}},
                headers=self.customer | {"Idempotency-Key": f"kills-{i}-{self.prefix}"},
                timeout=60,
            )
            r.raise_for_status()
            cid = r.json()["id"]
            ids.append(cid)
            for node in r.json().get("nodes", []):
                self.nodes[node["id"]] = (created, float("inf"))
        for cid in ids:
            self._until(
                lambda c=cid: self._get(f"/api/v1/clusters/{c}", self.customer)["status"],
                lambda s: s == "running",
                240,
                f"cluster {cid} running",
            )
        return ids

    def _get(self, path: str, headers: dict[str, str]) -> Any:
        r = httpx.get(self.url + path, headers=headers, timeout=10)
        r.raise_for_status()
        return r.json()

    # --- the run ---------------------------------------------------------------------------
    def _request_payout(self) -> None:
        try:
            earnings = self._get("/api/v1/provider/earnings", self.provider)
            available = int(earnings["earnings_micro"])
            if available < 1000:
                return
            amount = self.rng.randint(1000, available)
            r = httpx.post(
                self.url + "/api/v1/provider/payouts",
                json={"amount_micro": amount},
                headers=self.provider | {"Idempotency-Key": secrets.token_hex(8)},
                timeout=10,
            )
            if r.status_code in (200, 201):
                self.report.payouts_requested += 1
        except httpx.HTTPError:
            pass  # the API may be down (embedded): that request never happened

    def _chaos(self) -> None:
        end = time.monotonic() + self.seconds
        next_kill = time.monotonic() + self.rng.uniform(3, 10)
        next_payout = time.monotonic()
        while time.monotonic() < end:
            now = time.monotonic()
            if now >= next_payout:
                self._request_payout()
                if self.rng.random() < 0.3:
                    self.chain.control(delay_s=RPC_TIMEOUT_S + 2, methods=["sendTransaction"])
                    self.report.slow_rpc_sends += 1
                else:
                    self.chain.control()
                next_payout = now + self.rng.uniform(2, 5)
            if now >= next_kill:
                self._kill_metering_process()
                time.sleep(self.rng.uniform(0, 4))
                self._start_metering_process()
                next_kill = time.monotonic() + self.rng.uniform(3, 12)
            time.sleep(0.2)

    def _wind_down(self, cluster_ids: list[str]) -> None:
        self.chain.control()
        for cid in cluster_ids:
            self._until(
                lambda c=cid: (
                    httpx.post(
                        f"{self.url}/api/v1/clusters/{c}/terminate",
                        headers=self.customer,
                        timeout=30,
                    ).status_code
                ),
                lambda code: code in (200, 202, 409),
                120,
                f"terminate {cid}",
            )
        ended = time.time()
        self.nodes = {n: (c, ended) for n, (c, _) in self.nodes.items()}
        for cid in cluster_ids:
            self._until(
                lambda c=cid: self._get(f"/api/v1/clusters/{c}", self.customer)["status"],
                lambda s: s in ("terminated", "failed"),
                180,
                f"cluster {cid} ended",
            )
        # Payouts in flight reach an outcome (a slow send is confirmed or expires).
        self._until(
            lambda: [p["status"] for p in self._get("/api/v1/provider/payouts", self.provider)],
            lambda states: all(s in ("paid", "reversed") for s in states),
            180,
            "payouts final",
        )
        time.sleep(12)  # one settlement sweep after the last minute closed

    def run(self) -> Report:
        asyncio.run(self._database())
        try:
            self.chain.start()
            if self.shape == "production":
                from tesai import migrations

                migrations.upgrade(self.db_url)
                asyncio.run(self._users())
                self._spawn(
                    "server",
                    ["server", "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"],
                )
                self._spawn("beat", ["tasks", "beat"])
                self._start_metering_process()
                self._wait_api()
            else:
                self._start_metering_process()  # tesai up migrates the database
                asyncio.run(self._users())
            self._agents()
            clusters = self._clusters()
            self._chaos()
            if self.shape == "production" and "worker" not in self.procs:
                self._start_metering_process()
            self._wind_down(clusters)
            self.windows[-1].end = time.time()
            asyncio.run(self.check())
        finally:
            self.close()
        return self.report

    def close(self) -> None:
        for agent in self.agents:
            if agent.poll() is None:
                agent.stop()
        for name in list(self.procs):
            proc = self.procs[name]
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    self._kill(name)
        self.procs.clear()
        self.chain.stop()
        for root in self.temp_roots:
            subprocess.run(["pkill", "-9", "-f", str(root)], check=False)
        asyncio.run(self._drop())

    async def _drop(self) -> None:
        admin = await asyncpg.connect(_dsn(DATABASE_URL))
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{self.db_name}" WITH (FORCE)')
        finally:
            await admin.close()
        if self.shape == "production":
            from kombu import Connection

            from tesai.celery_app import create_celery
            from tesai.settings import Settings

            s = Settings(broker_url=BROKER_URL, task_queue_prefix=self.prefix)
            with Connection(BROKER_URL) as conn:
                channel: Any = conn.default_channel
                for q in create_celery(s).conf.task_queues:
                    channel.queue_delete(q.name)
                channel.exchange_delete(self.prefix)

    # --- the books -------------------------------------------------------------------------
    def _observable(self, created: float, ended: float) -> float:
        """Seconds of [created, ended] within an up window extended by the grace."""
        grace = 1.5 * HEARTBEAT_S
        total = 0.0
        for w in self.windows:
            lo = max(created, w.start)
            hi = min(ended, (w.end or ended) + grace)
            total += max(0.0, hi - lo)
        return total

    async def check(self) -> None:
        problems = self.report.problems
        conn = await asyncpg.connect(_dsn(self.db_url))
        try:
            unbalanced = await conn.fetch(
                "SELECT transaction_id, sum(amount) AS s FROM ledger_postings "
                "GROUP BY transaction_id HAVING sum(amount) <> 0"
            )
            problems += [f"transaction {r['transaction_id']} sums to {r['s']}" for r in unbalanced]
            drift = await conn.fetch(
                "SELECT a.id, a.balance, coalesce(sum(p.amount), 0) AS s FROM ledger_accounts a "
                "LEFT JOIN ledger_postings p ON p.account_id = a.id GROUP BY a.id "
                "HAVING a.balance <> coalesce(sum(p.amount), 0)"
            )
            problems += [f"account {r['id']} balance {r['balance']} ≠ {r['s']}" for r in drift]
            twice = await conn.fetch(
                "SELECT node_id, minute, count(*) AS n FROM usage_buckets "
                "GROUP BY node_id, minute HAVING count(*) > 1"
            )
            problems += [
                f"node {r['node_id']} minute {r['minute']} billed {r['n']}×" for r in twice
            ]
            unsettled = await conn.fetch(
                "SELECT b.id, b.amount_micro, a.balance FROM usage_buckets b "
                "JOIN ledger_accounts a ON a.id = b.hold_account_id "
                "WHERE NOT b.settled AND a.balance > 0"
            )
            problems += [
                f"bucket {r['id']} ({r['amount_micro']}) unsettled, hold has {r['balance']}"
                for r in unsettled
            ]
            meters = await conn.fetch(
                "SELECT m.node_id, m.billed_seconds, m.active, "
                "coalesce((SELECT sum(seconds) FROM usage_buckets b "
                "WHERE b.node_id = m.node_id), 0) AS bucketed FROM billing_node_meters m"
            )
            for m in meters:
                node = str(m["node_id"])
                created, ended = self.nodes.get(node, (0.0, time.time()))
                bound = self._observable(created, ended)
                self.report.billed_seconds[node] = m["billed_seconds"]
                self.report.bound_seconds[node] = bound
                if m["billed_seconds"] > bound:
                    problems.append(f"node {node}: billed {m['billed_seconds']} s > {bound:.1f}")
                if m["active"]:
                    problems.append(f"node {node}: meter still active after the end")
                if m["billed_seconds"] != m["bucketed"]:
                    problems.append(
                        f"node {node}: meter {m['billed_seconds']} s ≠ buckets {m['bucketed']} s"
                    )
            if not meters:
                problems.append("nothing was metered")
            payouts = await conn.fetch("SELECT status, signature, amount_micro FROM payouts")
            paid = {r["signature"]: r["amount_micro"] for r in payouts if r["status"] == "paid"}
            self.report.payouts_paid = len(paid)
            self.report.payouts_reversed = sum(1 for r in payouts if r["status"] == "reversed")
            problems += [
                f"payout still {r['status']}"
                for r in payouts
                if r["status"] not in ("paid", "reversed")
            ]
            pending = await conn.fetchval(
                "SELECT coalesce(sum(balance), 0) FROM ledger_accounts "
                "WHERE kind = 'provider_pending_payout'"
            )
            if pending:
                problems.append(f"{pending} still pending payout")
        finally:
            await conn.close()
        onchain = {
            t["signature"]: t["amount"]
            for t in self.chain.transfers(self.chain.setup["hot_wallet_token_account"])
        }
        if onchain != paid:
            problems.append(f"on chain {onchain} ≠ paid in the ledger {paid}")
