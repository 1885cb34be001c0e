import { useMutation, useQuery, useQueryClient } from "@tanstack/react-query";
import { useState, type FormEvent } from "react";
import { useSearchParams } from "react-router";
import { api, unwrap, type Schemas } from "@/api/client";
import { Button } from "@/components/Button";
import { Card, PageHeader, Stat } from "@/components/Card";
import { TextField } from "@/components/Field";
import { formatDateTime, formatDuration, shortId } from "@/components/format";
import { formatUsdc } from "@/components/money";
import { StatusBadge } from "@/components/StatusBadge";
import { EmptyState, ErrorState, Notice, QueryView } from "@/components/States";
import { Table } from "@/components/Table";

type Incident = Schemas["Incident"];
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
      <PageHeader title="Clusters" description="Look up a cluster by id (from a support request, the audit log or analytics), see its incidents, and force-terminate it." />
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
        <EmptyState title="No cluster selected">Paste a cluster id above to see its state and incidents.</EmptyState>
      )}
    </div>
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
