import { useQuery } from "@tanstack/react-query";
import { Link } from "react-router";
import { api, unwrap } from "@/api/client";
import { ButtonLink } from "@/components/Button";
import { PageHeader } from "@/components/Card";
import { formatDateTime } from "@/components/format";
import { clusterHardware } from "@/components/hardware";
import { formatUsdc } from "@/components/money";
import { EmptyState, QueryView } from "@/components/States";
import { StatusBadge } from "@/components/StatusBadge";
import { Table } from "@/components/Table";

export default function Clusters() {
  const clusters = useQuery({
    queryKey: ["clusters"],
    queryFn: () => unwrap(api.GET("/api/v1/clusters")),
    refetchInterval: 5000,
  });
  return (
    <div>
      <PageHeader title="Clusters" description="Your Ray clusters, newest first." actions={<ButtonLink to="/app/deploy">Deploy a cluster</ButtonLink>} />
      <QueryView query={clusters}>
        {(rows) => (
          <Table
            caption="Clusters"
            rows={[...rows].sort((a, b) => b.created_at.localeCompare(a.created_at))}
            rowKey={(c) => c.id}
            empty={
              <EmptyState title="No clusters yet" action={<ButtonLink to="/app/deploy">Deploy your first cluster</ButtonLink>}>
                A cluster is a Ray cluster on machines of the pool, billed by the second.
              </EmptyState>
            }
            columns={[
              { key: "name", header: "Name", render: (c) => <Link className="font-medium text-brand-700 underline" to={`/app/clusters/${c.id}`}>{c.name}</Link> },
              { key: "status", header: "Status", render: (c) => <StatusBadge status={c.status} title={c.status_reason ?? undefined} /> },
              { key: "hw", header: "Hardware", render: (c) => clusterHardware(c) },
              { key: "rate", header: "Listed per hour", render: (c) => formatUsdc(c.hourly_price_micro) },
              { key: "created", header: "Created", render: (c) => formatDateTime(c.created_at) },
              { key: "ends", header: "Ends", render: (c) => formatDateTime(c.ends_at) },
            ]}
          />
        )}
      </QueryView>
    </div>
  );
}
