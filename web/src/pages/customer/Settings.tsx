import { useMutation, useQuery, useQueryClient } from "@tanstack/react-query";
import { useState } from "react";
import { api, unwrap } from "@/api/client";
import { Button } from "@/components/Button";
import { Card, PageHeader, Stat } from "@/components/Card";
import { TextField } from "@/components/Field";
import { formatDateTime, formatPercent } from "@/components/format";
import { formatUsdc, parseUsdc } from "@/components/money";
import { EmptyState, ErrorState, Notice, QueryView } from "@/components/States";
import { StatusBadge } from "@/components/StatusBadge";

export default function Settings() {
  return (
    <div className="space-y-6">
      <PageHeader title="Limits and alerts" description="A monthly spend cap stops your clusters before they cost more; alerts tell you when you get close." />
      <SpendCap />
      <Notifications />
    </div>
  );
}

function SpendCap() {
  const qc = useQueryClient();
  const cap = useQuery({ queryKey: ["spend-cap"], queryFn: () => unwrap(api.GET("/api/v1/customer/spend-cap")) });
  const [value, setValue] = useState("");
  const micro = parseUsdc(value);
  const save = useMutation({
    mutationFn: (monthly_cap_micro: number | null) => unwrap(api.PUT("/api/v1/customer/spend-cap", { body: { monthly_cap_micro } })),
    onSuccess: (data) => {
      qc.setQueryData(["spend-cap"], data);
      setValue("");
    },
  });
  return (
    <Card title="Monthly spend cap">
      <QueryView query={cap}>
        {(c) => (
          <div className="space-y-4">
            <div className="grid grid-cols-2 gap-4 lg:grid-cols-3">
              <Stat label="Cap" value={c.monthly_cap_micro ? formatUsdc(c.monthly_cap_micro) : "None"} hint={`period ${c.period}`} />
              <Stat label="Spent this month" value={formatUsdc(c.month_to_date_micro)} hint={`+ ${formatUsdc(c.open_holds_micro)} held`} />
              <Stat label="Used" value={formatPercent(c.used_pct)} />
            </div>
            <form
              className="flex flex-wrap items-end gap-3"
              onSubmit={(e) => {
                e.preventDefault();
                if (micro) save.mutate(micro);
              }}
            >
              <div className="w-56">
                <TextField label="New cap (USDC per month)" inputMode="decimal" value={value} onChange={(e) => setValue(e.target.value)} error={value && !micro ? "Not an amount" : undefined} />
              </div>
              <Button type="submit" loading={save.isPending} disabled={!micro}>
                Set cap
              </Button>
              {c.monthly_cap_micro ? (
                <Button variant="secondary" onClick={() => save.mutate(null)}>
                  Remove cap
                </Button>
              ) : null}
            </form>
            {save.error && <ErrorState error={save.error} />}
            {save.isSuccess && <Notice tone="success">Saved.</Notice>}
          </div>
        )}
      </QueryView>
    </Card>
  );
}

function Notifications() {
  const qc = useQueryClient();
  const list = useQuery({ queryKey: ["notifications"], queryFn: () => unwrap(api.GET("/api/v1/notifications", { params: { query: { limit: 50 } } })), refetchInterval: 15000 });
  const readAll = useMutation({
    mutationFn: () => unwrap(api.POST("/api/v1/notifications/read-all")),
    onSuccess: () => void qc.invalidateQueries({ queryKey: ["notifications"] }),
  });
  return (
    <Card
      title={`Notifications${list.data?.unread ? ` (${list.data.unread} unread)` : ""}`}
      actions={list.data?.unread ? <Button variant="secondary" onClick={() => readAll.mutate()}>Mark all read</Button> : undefined}
    >
      <QueryView query={list}>
        {(page) =>
          page.items.length === 0 ? (
            <EmptyState title="No notifications">You are told here when spend reaches 80 % and 95 % of a cluster's budget or of your monthly cap, and when a cluster is stopped at 100 %.</EmptyState>
          ) : (
            <ul className="divide-y divide-slate-100">
              {page.items.map((n) => (
                <li key={n.id} className={`py-2 text-sm ${n.read_at ? "text-slate-600" : "text-slate-900"}`}>
                  <div className="flex flex-wrap items-center gap-2">
                    <StatusBadge status={n.severity === "critical" ? "failed" : n.severity === "warning" ? "degraded" : "active"} title={n.severity} />
                    <span className={n.read_at ? "" : "font-medium"}>{n.message}</span>
                  </div>
                  <div className="text-xs text-slate-600">{formatDateTime(n.created_at)}</div>
                </li>
              ))}
            </ul>
          )
        }
      </QueryView>
    </Card>
  );
}
