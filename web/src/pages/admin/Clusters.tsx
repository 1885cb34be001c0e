import { useMutation, useQuery, useQueryClient } from "@tanstack/react-query";
import { useState, type FormEvent } from "react";
import { useSearchParams } from "react-router";
import { api, unwrap, type Schemas } from "@/api/client";
import { Button } from "@/components/Button";
import { Card, PageHeader, Stat } from "@/components/Card";
import { SelectField, TextField } from "@/components/Field";
import { formatDateTime, formatDuration, shortId } from "@/components/format";
import { clusterHardware } from "@/components/hardware";
import { formatUsdc } from "@/components/money";
import { StatusBadge } from "@/components/StatusBadge";
import { EmptyState, ErrorState, Notice, QueryView } from "@/components/States";
import { Table } from "@/components/Table";
import { currentCursor, firstPage, nextPage, previousPage } from "./lib";

type Incident = Schemas["Incident"];
type AdminCluster = Schemas["AdminClusterOut"];
const STATUSES = ["pending", "provisioning", "running", "degraded", "terminating", "terminated", "failed"] as const;
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
const TERMINAL = new Set(["terminated", "failed", "expired", "terminating"]);

export default function AdminClusters() {
  const [params, setParams] = useSearchParams();
  const clusterId = params.get("id") ?? "";
  const [text, setText] = useState(clusterId);
  const error = text.trim() && !UUID.test(text.trim()) ? "A cluster id (UUID)" : undefined;
  const submit = (e: FormEvent) => {
    e.preventDefault();
    if (!error && text.trim()) setParams({ id: text.trim().toLowerCase() });
  };
  return (
    <div className="space-y-6">
      <PageHeader title="Clusters" description="Every customer's clusters by status; pick one (or paste its id from a support request or the audit log) to see its incidents and force-terminate it." />
      <Card>
        <form onSubmit={submit} role="search" aria-label="Find a cluster" className="flex flex-col gap-2 sm:flex-row sm:items-end">
          <div className="flex-1">
            <TextField label="Cluster id" value={text} onChange={(e) => setText(e.target.value)} error={error} placeholder="UUID" />
          </div>
          <Button type="submit" disabled={!text.trim() || !!error}>
            Look up
          </Button>
        </form>
      </Card>
      {clusterId ? (
        <ClusterPanel key={clusterId} clusterId={clusterId} />
      ) : (
        <EmptyState title="No cluster selected">Pick a cluster below or paste its id above to see its state and incidents.</EmptyState>
      )}
      <ClusterList
        onPick={(id) => {
          setText(id);
          setParams({ id });
        }}
      />
    </div>
  );
}

/** Every customer's clusters, newest first, by status; pages by creation time. */
function ClusterList({ onPick }: { onPick: (id: string) => void }) {
  const [status, setStatus] = useState("");
  const [pager, setPager] = useState(firstPage<string>);
  const before = currentCursor(pager);
  const query = { limit: 25, ...(status ? { status: status as (typeof STATUSES)[number] } : {}), ...(before ? { before } : {}) };
  const list = useQuery({
    queryKey: ["admin", "clusters", query],
    queryFn: () => unwrap(api.GET("/api/v1/internal/clusters", { params: { query } })),
    refetchInterval: 10000,
  });
  return (
    <Card title="All clusters">
      <div className="mb-3 max-w-xs">
        <SelectField
          label="Status"
          value={status}
          onChange={(e) => {
            setStatus(e.target.value);
            setPager(firstPage<string>());
          }}
        >
          <option value="">Any status</option>
          {STATUSES.map((s) => (
            <option key={s} value={s}>
              {s}
            </option>
          ))}
        </SelectField>
      </div>
      <QueryView query={list} loadingLabel="Loading clusters…">
        {(rows) => (
          <div className="space-y-3">
            <Table<AdminCluster>
              caption="Clusters of every customer, newest first"
              rows={rows}
              rowKey={(c) => c.id}
              empty={<EmptyState title="No clusters match">Try another status.</EmptyState>}
              columns={[
                {
                  key: "name",
                  header: "Cluster",
                  render: (c) => (
                    <button type="button" className="text-brand-700 underline" onClick={() => onPick(c.id)}>
                      {c.name}
                      <span className="sr-only"> ({c.id})</span>
                    </button>
                  ),
                },
                { key: "status", header: "Status", render: (c) => <StatusBadge status={c.status} title={c.status_reason ?? undefined} /> },
                { key: "customer", header: "Customer", render: (c) => <code className="text-xs">{shortId(c.customer_id)}</code> },
                { key: "hardware", header: "Hardware", render: (c) => clusterHardware(c) },
                { key: "price", header: "Listed per hour", render: (c) => formatUsdc(c.hourly_price_micro) },
                { key: "created", header: "Created", render: (c) => formatDateTime(c.created_at) },
              ]}
            />
            <nav aria-label="Cluster pages" className="flex items-center justify-between gap-2">
              <Button variant="secondary" onClick={() => setPager(previousPage(pager))} disabled={pager.cursors.length <= 1}>
                Newer
              </Button>
              <Button variant="secondary" onClick={() => setPager(nextPage(pager, rows[rows.length - 1].created_at))} disabled={rows.length < query.limit}>
                Older
              </Button>
            </nav>
          </div>
        )}
      </QueryView>
    </Card>
  );
}

function ClusterPanel({ clusterId }: { clusterId: string }) {
  const queryClient = useQueryClient();
  const timeline = useQuery({
    queryKey: ["admin", "cluster", clusterId],
    queryFn: () => unwrap(api.GET("/api/v1/internal/ops/clusters/{cluster_id}/incidents", { params: { path: { cluster_id: clusterId } } })),
    refetchInterval: 5000,
  });
  const [reason, setReason] = useState("");
  const [confirming, setConfirming] = useState(false);
  const terminate = useMutation({
    mutationFn: () =>
      unwrap(api.POST("/api/v1/internal/clusters/{cluster_id}/terminate", { params: { path: { cluster_id: clusterId }, query: { reason: reason.trim() } } })),
    onSuccess: () => {
      setConfirming(false);
      void queryClient.invalidateQueries({ queryKey: ["admin", "cluster", clusterId] });
    },
  });
  return (
    <QueryView query={timeline} loadingLabel="Loading the cluster…">
      {(t) => (
        <div className="space-y-6">
          <div className="grid grid-cols-2 gap-3 md:grid-cols-4">
            <Stat label="Status" value={<StatusBadge status={t.status} />} hint={shortId(t.subject_id)} />
            <Stat label="Degraded time" value={formatDuration(t.impact_seconds)} />
            <Stat label="Unbilled time" value={formatDuration(t.unbilled_seconds)} />
            <Stat label="Credit to customer" value={formatUsdc(t.credit_micro)} />
          </div>
          <Card title="Incidents">
            <Table<Incident>
              caption="Faults and operator actions on this cluster"
              rows={t.incidents}
              rowKey={(i) => `${i.at}-${i.reason}-${i.node_id ?? ""}`}
              empty={<EmptyState title="No incidents">Nothing went wrong on this cluster and no operator acted on it.</EmptyState>}
              columns={[
                { key: "at", header: "When", render: (i) => formatDateTime(i.at) },
                { key: "kind", header: "Kind", render: (i) => <StatusBadge status={i.kind === "fault" ? "failed" : "requested"} title={i.kind} /> },
                { key: "reason", header: "Reason code", render: (i) => <code className="text-xs">{i.reason}</code> },
                { key: "message", header: "Message", className: "whitespace-normal min-w-64", render: (i) => i.message },
                { key: "nodes", header: "Nodes affected", render: (i) => i.nodes_affected },
              ]}
            />
          </Card>
          <Card title="Force terminate">
            {TERMINAL.has(t.status) ? (
              <Notice tone="info">This cluster is {t.status}; there is nothing to terminate.</Notice>
            ) : (
              <form
                className="space-y-3"
                aria-label="Force terminate cluster"
                onSubmit={(e) => {
                  e.preventDefault();
                  if (reason.trim()) setConfirming(true);
                }}
              >
                <p className="text-sm text-slate-700">
                  Stops the cluster now: nodes are released, used time is settled and the rest of the customer's hold is returned. The reason is
                  kept in the cluster's events and the audit log.
                </p>
                <TextField label="Reason" required maxLength={200} value={reason} onChange={(e) => setReason(e.target.value)} placeholder="e.g. abuse report #123" />
                {!confirming ? (
                  <Button type="submit" variant="danger" disabled={!reason.trim()}>
                    Force terminate…
                  </Button>
                ) : (
                  <div role="group" aria-label="Confirm termination" className="flex flex-wrap items-center gap-2 rounded-md border border-amber-200 bg-amber-50 p-2 text-sm text-amber-900">
                    <span>Terminate cluster {shortId(clusterId)} now?</span>
                    <Button variant="danger" onClick={() => terminate.mutate()} loading={terminate.isPending}>
                      Terminate now
                    </Button>
                    <Button variant="ghost" onClick={() => setConfirming(false)}>
                      Cancel
                    </Button>
                  </div>
                )}
              </form>
            )}
            {terminate.data && <Notice tone="success">Cluster {terminate.data.name} is now {terminate.data.status}.</Notice>}
            {terminate.error && <ErrorState title="Not terminated" error={terminate.error} />}
          </Card>
        </div>
      )}
    </QueryView>
  );
}
