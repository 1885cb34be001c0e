import { useQuery } from "@tanstack/react-query";
import { Link } from "react-router";
import { api, unwrap } from "@/api/client";
import { ButtonLink } from "@/components/Button";
import { Card, PageHeader, Stat } from "@/components/Card";
import { formatUsdc } from "@/components/money";
import { EmptyState, QueryView } from "@/components/States";
import { StatusBadge } from "@/components/StatusBadge";
import { useAuth } from "@/stores/auth";

const LIVE = new Set(["pending", "provisioning", "running", "degraded", "terminating"]);

export default function Overview() {
  const user = useAuth((s) => s.user);
  const balance = useQuery({ queryKey: ["balance"], queryFn: () => unwrap(api.GET("/api/v1/customer/balance")), refetchInterval: 5000 });
  const clusters = useQuery({ queryKey: ["clusters"], queryFn: () => unwrap(api.GET("/api/v1/clusters")), refetchInterval: 5000 });
  return (
    <div className="space-y-6">
      <PageHeader title="Overview" description={`Signed in as ${user?.email ?? user?.display_name ?? ""}`} actions={<ButtonLink to="/app/deploy">Deploy a cluster</ButtonLink>} />
      <QueryView query={balance}>
        {(b) => (
          <div className="grid grid-cols-2 gap-4 lg:grid-cols-3">
            <Stat label="Available" value={formatUsdc(b.available_micro)} hint={<Link className="underline" to="/app/billing">Deposit USDC</Link>} />
            <Stat label="Held" value={formatUsdc(b.held_micro)} hint="Reserved by running clusters" />
            <Stat label="Live clusters" value={clusters.data?.filter((c) => LIVE.has(c.status)).length ?? "…"} />
          </div>
        )}
      </QueryView>
      <Card title="Live clusters">
        <QueryView query={clusters}>
          {(rows) => {
            const live = rows.filter((c) => LIVE.has(c.status));
            return live.length === 0 ? (
              <EmptyState title="Nothing running" action={<ButtonLink to="/app/deploy">Deploy a cluster</ButtonLink>}>
                {(balance.data?.available_micro ?? 0) === 0 ? "Deposit USDC first, then deploy a Ray cluster in a minute." : "Deploy a Ray cluster on machines of the pool."}
              </EmptyState>
            ) : (
              <ul className="divide-y divide-slate-100">
                {live.map((c) => (
                  <li key={c.id} className="flex items-center justify-between py-2">
                    <Link className="font-medium text-brand-700 underline" to={`/app/clusters/${c.id}`}>{c.name}</Link>
                    <StatusBadge status={c.status} />
                  </li>
                ))}
              </ul>
            );
          }}
        </QueryView>
      </Card>
    </div>
  );
}
