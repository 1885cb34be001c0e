import { useMutation, useQuery, useQueryClient } from "@tanstack/react-query";
import { useEffect, useRef, useState } from "react";
import { Link, useParams } from "react-router";
import { api, authFetch, unwrap, type Schemas } from "@/api/client";
import { Button } from "@/components/Button";
import { Card, PageHeader, Stat } from "@/components/Card";
import { CopyBlock, TextField } from "@/components/Field";
import { formatDateTime, formatDuration, shortId, stripAnsi } from "@/components/format";
import { clusterHardware } from "@/components/hardware";
import { formatUsdc } from "@/components/money";
import { EmptyState, ErrorState, Notice, QueryView } from "@/components/States";
import { StatusBadge } from "@/components/StatusBadge";
import { Table } from "@/components/Table";

type Cluster = Schemas["ClusterDetail"];
type Job = Schemas["JobOut"];

const LIVE = new Set(["pending", "provisioning", "running", "degraded"]);
const STEPS = [
  { status: "pending", label: "Machines booked" },
  { status: "provisioning", label: "Starting Ray on every node" },
  { status: "running", label: "Running" },
];
const FINAL_JOB = new Set(["SUCCEEDED", "FAILED", "STOPPED"]);

/** Whether the cluster's head answers: jobs and the dashboard live on it, so while it is lost
 *  (a degraded cluster re-forming) neither can be used, whatever the cluster's status. */
function headRunning(c: Pick<Cluster, "status" | "nodes">): boolean {
  return (c.status === "running" || c.status === "degraded") && c.nodes.some((n) => n.role === "head" && n.state === "running" && !n.released_at);
}

export default function ClusterDetail() {
  const { clusterId = "" } = useParams();
  const cluster = useQuery({
    queryKey: ["cluster", clusterId],
    queryFn: () => unwrap(api.GET("/api/v1/clusters/{cluster_id}", { params: { path: { cluster_id: clusterId } } })),
    refetchInterval: (q) => (q.state.data && !LIVE.has(q.state.data.status) && q.state.data.status !== "terminating" ? false : 2000),
  });
  return (
    <QueryView query={cluster} loadingLabel="Loading the cluster…">
      {(c) => <ClusterView cluster={c} />}
    </QueryView>
  );
}

function ClusterView({ cluster: c }: { cluster: Cluster }) {
  const qc = useQueryClient();
  const live = LIVE.has(c.status);
  const refresh = () => void qc.invalidateQueries({ queryKey: ["cluster", c.id] });
  const [extendHours, setExtendHours] = useState("1");
  const [confirming, setConfirming] = useState(false);
  const path = { params: { path: { cluster_id: c.id } } };

  const terminate = useMutation({
    mutationFn: () => unwrap(api.POST("/api/v1/clusters/{cluster_id}/terminate", path)),
    onSuccess: () => {
      setConfirming(false);
      refresh();
    },
  });
  const extend = useMutation({
    mutationFn: () => unwrap(api.POST("/api/v1/clusters/{cluster_id}/extend", { ...path, body: { duration_s: Math.round(Number(extendHours) * 3600) } })),
    onSuccess: refresh,
  });

  return (
    <div className="space-y-6">
      <PageHeader
        title={c.name}
        description={
          <span className="inline-flex flex-wrap items-center gap-2">
            <span data-testid="cluster-status">
              <StatusBadge status={c.status} />
            </span>
            {c.status_reason && <span className="text-slate-600">{c.status_reason.replace(/_/g, " ")}</span>}
            <span className="text-slate-600">· Ray {c.ray_version} · id {shortId(c.id)}</span>
          </span>
        }
        actions={<Link className="text-sm text-brand-700 underline" to="/app/clusters">All clusters</Link>}
      />

      {(c.status === "pending" || c.status === "provisioning") && <Progress status={c.status} />}

      <div className="grid grid-cols-2 gap-4 lg:grid-cols-4">
        <Stat label="Hardware" value={clusterHardware({ gpu_model: c.gpu_model, gpus: c.gpu_model ? c.gpus : c.nodes.filter((n) => !n.released_at).length })} hint={c.min_gpus ? `autoscaling ${c.min_gpus}–${c.max_gpus}` : undefined} />
        <Stat label="Per hour" value={formatUsdc(c.hourly_price_micro)} hint="listed price; the platform fee is added on top" />
        <HeldStat cluster={c} />
        <Stat label="Ends" value={<span className="text-base">{formatDateTime(c.ends_at)}</span>} hint={`rented ${formatDuration(c.duration_s)}`} />
      </div>

      {live && (
        <Card title="Manage">
          <div className="flex flex-wrap items-end gap-4">
            <div className="w-40">
              <TextField label="Extend by (hours)" type="number" min={0.1} step={0.5} value={extendHours} onChange={(e) => setExtendHours(e.target.value)} />
            </div>
            <Button variant="secondary" onClick={() => extend.mutate()} loading={extend.isPending}>
              Extend
            </Button>
            {confirming ? (
              <span className="flex flex-wrap items-center gap-2">
                <span className="text-sm text-slate-800">Stop every node and settle the bill?</span>
                <Button variant="danger" onClick={() => terminate.mutate()} loading={terminate.isPending}>
                  Yes, terminate
                </Button>
                <Button variant="ghost" onClick={() => setConfirming(false)}>
                  Cancel
                </Button>
              </span>
            ) : (
              <Button variant="danger" onClick={() => setConfirming(true)}>
                Terminate
              </Button>
            )}
          </div>
          {extend.isSuccess && <div className="mt-3"><Notice tone="success">Extended. The new end time is shown above.</Notice></div>}
          {(extend.error || terminate.error) && <div className="mt-3"><ErrorState error={extend.error ?? terminate.error} /></div>}
        </Card>
      )}

      <Card title="Nodes">
        <Table
          caption="Nodes"
          rows={c.nodes}
          rowKey={(n) => n.id}
          empty={<EmptyState title="No nodes yet">Nodes appear as soon as machines are booked.</EmptyState>}
          columns={[
            { key: "i", header: "#", render: (n) => n.index },
            { key: "role", header: "Role", render: (n) => n.role },
            { key: "state", header: "State", render: (n) => <StatusBadge status={n.state} title={n.state_reason ?? undefined} /> },
            { key: "dev", header: "Machine", render: (n) => <Link className="text-brand-700 underline" to={`/devices/${n.device_id}`}>{shortId(n.device_id)}</Link> },
            ...(c.gpu_model ? [{ key: "gpus", header: "GPUs", render: (n: Cluster["nodes"][number]) => n.gpus }] : []),
            { key: "price", header: "Per hour", render: (n) => formatUsdc(n.price_per_hour_micro) },
            { key: "up", header: "Healthy for", render: (n) => formatDuration(n.healthy_seconds) },
            { key: "reason", header: "Reason", render: (n) => n.state_reason ?? "—" },
          ]}
        />
      </Card>

      {live && <Jobs cluster={c} />}

      <div className="grid gap-6 lg:grid-cols-2">
        <Card title="Timeline">
          <ol className="space-y-3" aria-label="State timeline">
            {[...c.events].reverse().map((e, i) => (
              <li key={`${e.at}-${i}`} className="border-l-2 border-slate-200 pl-3">
                <div className="flex flex-wrap items-center gap-2 text-sm">
                  {e.to_status && <StatusBadge status={e.to_status} />}
                  <code className="rounded bg-slate-100 px-1 text-xs text-slate-800" data-testid="event-reason">{e.reason}</code>
                  <span className="text-xs text-slate-600">{formatDateTime(e.at)}</span>
                </div>
                {e.message && <p className="mt-1 text-sm text-slate-700">{e.message}</p>}
              </li>
            ))}
          </ol>
        </Card>
        <RayAccess cluster={c} />
      </div>
    </div>
  );
}

/** What is still held for the cluster: its hold account's balance, the figure the billing page
 *  sums (the hold at booking less the usage settled from it since). */
function HeldStat({ cluster: c }: { cluster: Cluster }) {
  const balance = useQuery({ queryKey: ["balance"], queryFn: () => unwrap(api.GET("/api/v1/customer/balance")), refetchInterval: 5000 });
  const left = balance.data ? (balance.data.holds[`cluster:${c.id}`] ?? 0) : undefined;
  const budget = c.budget_micro ? ` · budget ${formatUsdc(c.budget_micro)}` : "";
  return <Stat label="Held now" value={left === undefined ? "…" : formatUsdc(left)} hint={`of ${formatUsdc(c.hold_micro)} held in all${budget}`} />;
}

function Progress({ status }: { status: string }) {
  const at = STEPS.findIndex((s) => s.status === status);
  return (
    <Card title="Provisioning">
      <ol className="grid gap-2 sm:grid-cols-3" aria-label="Provisioning progress">
        {STEPS.map((s, i) => (
          <li key={s.status} aria-current={i === at ? "step" : undefined} className={`rounded-md border p-3 text-sm ${i < at ? "border-green-300 bg-green-50 text-green-900" : i === at ? "border-brand-500 bg-brand-50 text-brand-700" : "border-slate-200 text-slate-600"}`}>
            <span className="font-medium">{i + 1}. {s.label}</span>
            {i === at && <span className="ml-2 inline-block size-3 animate-pulse rounded-full bg-brand-500 align-middle" aria-hidden="true" />}
          </li>
        ))}
      </ol>
    </Card>
  );
}

function RayAccess({ cluster: c }: { cluster: Cluster }) {
  const proxy = `/api/v1/clusters/${c.id}/ray`;
  const address = c.ray_address ?? `${window.location.origin}${proxy}`;
  const check = useMutation({
    mutationFn: async () => {
      const r = await authFetch(`${proxy}/api/version`);
      if (!r.ok) throw new Error(r.status === 409 ? "The head node is not ready yet." : `The dashboard answered ${r.status}.`);
      return (await r.json()) as { ray_version?: string };
    },
  });
  const open = useMutation({
    // The tab is opened within the click (so no popup blocker stops it) and sent to the
    // one-time dashboard URL once the API has issued it.
    mutationFn: async (tab: Window | null) => {
      try {
        const session = await unwrap(api.POST("/api/v1/clusters/{cluster_id}/dashboard-session", { params: { path: { cluster_id: c.id } } }));
        if (tab) {
          tab.opener = null;
          tab.location.href = session.url;
        }
        return { url: session.url, opened: tab !== null };
      } catch (e) {
        tab?.close();
        throw e;
      }
    },
  });
  return (
    <Card title="Ray dashboard">
      <p className="mb-2 text-sm text-slate-700">
        Open the head's Ray dashboard in a new tab (a read-only sign-in for this cluster, valid up to an hour), or reach it with your token (an API key from <Link className="underline" to="/app/api-keys">API keys</Link>) using plain Ray tooling.
      </p>
      <div className="mb-3 flex flex-wrap items-center gap-3">
        <Button onClick={() => open.mutate(window.open("about:blank", "_blank"))} loading={open.isPending} disabled={!headRunning(c)}>
          Open Ray dashboard<span className="sr-only"> (opens in a new tab)</span>
        </Button>
        {open.data && (
          <span className="text-sm text-slate-700" role="status">
            {open.data.opened ? (
              "Opened in a new tab."
            ) : (
              <>
                Your browser blocked the new tab: <a className="underline" href={open.data.url} target="_blank" rel="noopener noreferrer">open the dashboard</a> within a minute.
              </>
            )}
          </span>
        )}
        {open.error && <span className="text-sm text-red-800" role="alert">{(open.error as Error).message}</span>}
      </div>
      <CopyBlock label="Ray job submit command" text={`RAY_JOB_HEADERS='{"Authorization": "Bearer $TESAI_API_KEY"}' \\\n  ray job submit --address ${address} -- python my_job.py`} />
      <div className="mt-3 flex flex-wrap items-center gap-3">
        <Button variant="secondary" onClick={() => check.mutate()} loading={check.isPending} disabled={!headRunning(c)}>
          Check the dashboard
        </Button>
        {check.data && <span className="text-sm text-green-800">Dashboard up · Ray {check.data.ray_version ?? "?"}</span>}
        {check.error && <span className="text-sm text-red-800">{(check.error as Error).message}</span>}
      </div>
    </Card>
  );
}

function Jobs({ cluster: c }: { cluster: Cluster }) {
  const qc = useQueryClient();
  const [entrypoint, setEntrypoint] = useState("python -c \"print('hello from TES AI')\"");
  const [selected, setSelected] = useState<string | null>(null);
  const path = { params: { path: { cluster_id: c.id } } };
  const jobs = useQuery({
    queryKey: ["jobs", c.id],
    queryFn: () => unwrap(api.GET("/api/v1/clusters/{cluster_id}/jobs", path)),
    refetchInterval: 3000,
    enabled: c.status === "running" || c.status === "degraded",
  });
  const submit = useMutation({
    mutationFn: () => unwrap(api.POST("/api/v1/clusters/{cluster_id}/jobs", { ...path, body: { entrypoint } })),
    onSuccess: (job) => {
      setSelected(job.id);
      void qc.invalidateQueries({ queryKey: ["jobs", c.id] });
    },
  });
  const stop = useMutation({
    mutationFn: (jobId: string) => unwrap(api.POST("/api/v1/clusters/{cluster_id}/jobs/{job_id}/stop", { params: { path: { cluster_id: c.id, job_id: jobId } } })),
    onSuccess: () => void qc.invalidateQueries({ queryKey: ["jobs", c.id] }),
  });
  if (c.status !== "running" && c.status !== "degraded") {
    return (
      <Card title="Jobs">
        <EmptyState title="Jobs can be submitted once the cluster is running">This page updates by itself; provisioning usually takes under a minute.</EmptyState>
      </Card>
    );
  }
  const current = jobs.data?.find((j) => j.id === selected) ?? null;
  const headUp = headRunning(c);
  return (
    <Card title="Jobs">
      {!headUp && (
        <div className="mb-3">
          <Notice tone="warning">The head node is lost and being replaced: jobs can be submitted again once it runs. Jobs with retries are resubmitted by themselves.</Notice>
        </div>
      )}
      <form
        className="flex flex-col gap-3 sm:flex-row sm:items-end"
        onSubmit={(e) => {
          e.preventDefault();
          submit.mutate();
        }}
      >
        <div className="flex-1">
          <TextField label="Entrypoint" value={entrypoint} onChange={(e) => setEntrypoint(e.target.value)} required className="mt-1 block w-full rounded-md border border-slate-300 px-3 py-2 font-mono text-sm" />
        </div>
        <Button type="submit" loading={submit.isPending} disabled={!headUp}>
          Submit job
        </Button>
      </form>
      {submit.error && <div className="mt-3"><ErrorState error={submit.error} /></div>}
      <div className="mt-4">
        <QueryView query={jobs}>
          {(rows) => (
            <Table
              caption="Jobs"
              rows={[...rows].sort((a, b) => b.created_at.localeCompare(a.created_at))}
              rowKey={(j) => j.id ?? j.submission_id}
              empty={<EmptyState title="No jobs yet">Submit a command above; it runs on the head node with Ray connected to the cluster.</EmptyState>}
              columns={[
                { key: "e", header: "Entrypoint", render: (j) => <code className="text-xs">{j.entrypoint.length > 48 ? `${j.entrypoint.slice(0, 48)}…` : j.entrypoint}</code> },
                { key: "s", header: "Status", render: (j) => <span data-testid="job-status"><StatusBadge status={j.status.toLowerCase()} title={j.message ?? undefined} /></span> },
                { key: "c", header: "Submitted", render: (j) => formatDateTime(j.created_at) },
                {
                  key: "a",
                  header: <span className="sr-only">Actions</span>,
                  render: (j) => {
                    const id = j.id;
                    if (!id) {
                      // Submitted with Ray's own tooling: Ray's commands take its submission id.
                      return <span className="text-xs text-slate-500" title={j.submission_id}>via Ray</span>;
                    }
                    return (
                      <span className="flex gap-2">
                        <Button variant="secondary" className="px-2 py-1" onClick={() => setSelected(id)} aria-label={`Show logs of job ${shortId(id)}`}>
                          Logs
                        </Button>
                        {!FINAL_JOB.has(j.status) && (
                          <Button variant="ghost" className="px-2 py-1" onClick={() => stop.mutate(id)} aria-label={`Stop job ${shortId(id)}`}>
                            Stop
                          </Button>
                        )}
                      </span>
                    );
                  },
                },
              ]}
            />
          )}
        </QueryView>
      </div>
      {current?.id && <JobLogs clusterId={c.id} job={{ id: current.id, status: current.status }} />}
    </Card>
  );
}

/** Follows the job's log stream (`?follow=true`) until the job ends. */
function JobLogs({ clusterId, job }: { clusterId: string; job: Pick<Job, "id" | "status"> }) {
  const [text, setText] = useState("");
  const [error, setError] = useState<string | null>(null);
  const [streaming, setStreaming] = useState(false);
  const pre = useRef<HTMLPreElement>(null);
  const final = FINAL_JOB.has(job.status);

  useEffect(() => {
    const abort = new AbortController();
    let cancelled = false;
    (async () => {
      setText("");
      setError(null);
      setStreaming(true);
      try {
        const r = await authFetch(`/api/v1/clusters/${clusterId}/jobs/${job.id}/logs?follow=${final ? "false" : "true"}`, { signal: abort.signal });
        if (!r.ok || !r.body) throw new Error(`Logs unavailable (${r.status})`);
        const reader = r.body.getReader();
        const decoder = new TextDecoder();
        for (;;) {
          const { done, value } = await reader.read();
          if (done || cancelled) break;
          setText((t) => t + decoder.decode(value, { stream: true }));
        }
      } catch (e) {
        if (!cancelled) setError((e as Error).message);
      } finally {
        if (!cancelled) setStreaming(false);
      }
    })();
    return () => {
      cancelled = true;
      abort.abort();
    };
    // Re-open once when the job finishes, to be sure to have the tail.
  }, [clusterId, job.id, final]);

  useEffect(() => {
    if (pre.current) pre.current.scrollTop = pre.current.scrollHeight;
  }, [text]);

  return (
    <div className="mt-4">
      <h3 className="mb-2 flex items-center gap-2 text-sm font-semibold text-slate-900">
        Logs of job {shortId(job.id)} <StatusBadge status={job.status.toLowerCase()} />
        {streaming && <span className="text-xs font-normal text-slate-600">live</span>}
      </h3>
      {error && <ErrorState error={new Error(error)} />}
      <pre ref={pre} data-testid="job-logs" tabIndex={0} aria-label="Job logs" className="max-h-80 overflow-auto rounded-md bg-slate-900 p-3 text-xs text-slate-100">
        {stripAnsi(text) || (streaming ? "Waiting for output…" : "No output.")}
      </pre>
    </div>
  );
}
