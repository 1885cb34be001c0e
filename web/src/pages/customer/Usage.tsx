import { useQuery } from "@tanstack/react-query";
import { useMemo } from "react";
import { Link } from "react-router";
import { api, download, unwrap } from "@/api/client";
import { Button } from "@/components/Button";
import { Card, PageHeader } from "@/components/Card";
import { BarChartView } from "@/components/charts";
import { formatDuration, shortId } from "@/components/format";
import { formatUsdc } from "@/components/money";
import { EmptyState, QueryView } from "@/components/States";
import { Table } from "@/components/Table";

export default function Usage() {
  const usage = useQuery({ queryKey: ["usage"], queryFn: () => unwrap(api.GET("/api/v1/customer/usage")), refetchInterval: 10000 });
  const invoices = useQuery({ queryKey: ["invoices"], queryFn: () => unwrap(api.GET("/api/v1/customer/invoices")), refetchInterval: 10000 });
  const byCluster = useMemo(() => {
    const sums = new Map<string, number>();
    for (const u of usage.data ?? []) sums.set(u.cluster_id, (sums.get(u.cluster_id) ?? 0) + u.amount_micro);
    return [...sums].map(([id, micro]) => ({ cluster: shortId(id), usdc: micro / 1e6 }));
  }, [usage.data]);

  return (
    <div className="space-y-6">
      <PageHeader title="Usage and invoices" description="What each cluster node used, by the second, and your monthly statements." />
      <Card title="Monthly statements" actions={<Button variant="secondary" onClick={() => void download("/api/v1/customer/usage?format=csv", "usage.csv")}>Download usage CSV</Button>}>
        <QueryView query={invoices}>
          {(rows) => (
            <Table
              caption="Monthly statements"
              rows={rows}
              rowKey={(r) => r.month}
              empty={<EmptyState title="No statements yet">A statement appears for every month with deposits, credits or usage.</EmptyState>}
              columns={[
                { key: "m", header: "Month", render: (r) => r.month },
                { key: "d", header: "Deposited", className: "text-right", render: (r) => formatUsdc(r.deposited_micro) },
                { key: "g", header: "Credits", className: "text-right", render: (r) => formatUsdc(r.granted_micro) },
                { key: "c", header: "Charged", className: "text-right", render: (r) => <span data-testid="invoice-charged">{formatUsdc(r.charged_micro)}</span> },
                { key: "r", header: "Released holds", className: "text-right", render: (r) => formatUsdc(r.released_micro) },
              ]}
            />
          )}
        </QueryView>
      </Card>
      <Card title="Spend by cluster">
        {byCluster.length ? (
          <BarChartView label="Spend by cluster in USDC" data={byCluster} xKey="cluster" series={[{ key: "usdc", label: "USDC" }]} valueFormat={(v) => `$${v.toFixed(2)}`} />
        ) : (
          <EmptyState title="No usage yet" action={<Link className="text-brand-700 underline" to="/app/deploy">Deploy a cluster</Link>}>Usage is metered per node while a cluster runs.</EmptyState>
        )}
      </Card>
      <Card title="Usage lines">
        <QueryView query={usage}>
          {(rows) => (
            <Table
              caption="Usage lines"
              rows={rows}
              rowKey={(u) => u.node_id}
              empty={<EmptyState title="No usage yet">Usage lines appear while and after your clusters run.</EmptyState>}
              columns={[
                { key: "c", header: "Cluster", render: (u) => <Link className="text-brand-700 underline" to={`/app/clusters/${u.cluster_id}`}>{shortId(u.cluster_id)}</Link> },
                { key: "n", header: "Node", render: (u) => shortId(u.node_id) },
                { key: "s", header: "Time", render: (u) => formatDuration(u.seconds) },
                { key: "p", header: "Per hour", className: "text-right", render: (u) => formatUsdc(u.price_per_hour_micro) },
                { key: "a", header: "Amount", className: "text-right", render: (u) => <span data-testid="usage-amount">{formatUsdc(u.amount_micro)}</span> },
                { key: "st", header: "Settled", className: "text-right", render: (u) => formatUsdc(u.settled_micro) },
              ]}
            />
          )}
        </QueryView>
      </Card>
    </div>
  );
}
