import { useQuery } from "@tanstack/react-query";
import { useMemo, useState } from "react";
import { Link } from "react-router";
import { api, unwrap } from "@/api/client";
import { Card, PageHeader, Stat } from "@/components/Card";
import { BarChartView, TimeSeriesChart } from "@/components/charts";
import { SelectField } from "@/components/Field";
import { formatDateTime, formatPercent } from "@/components/format";
import { plural, rateUnit } from "@/components/hardware";
import { feeNote, formatRate } from "@/components/money";
import { EmptyState, QueryView } from "@/components/States";
import { Table } from "@/components/Table";
import { usePool } from "./usePool";

type Row = Record<string, string | number | null>;

export default function PoolExplorer() {
  const { query, samples } = usePool(5000);
  const [days, setDays] = useState("7");
  const since = useMemo(() => new Date(Date.now() - Number(days) * 86400_000).toISOString(), [days]);
  const supply = useQuery({
    queryKey: ["analytics", "supply_demand", days],
    queryFn: () => unwrap(api.GET("/api/v1/public/analytics/{name}", { params: { path: { name: "supply_demand" }, query: { since, grain: Number(days) > 3 ? "day" : "hour" } } })),
    refetchInterval: 60000,
  });
  const prices = useQuery({
    queryKey: ["analytics", "price_index", days],
    queryFn: () => unwrap(api.GET("/api/v1/public/analytics/{name}", { params: { path: { name: "price_index" }, query: { since, grain: Number(days) > 3 ? "day" : "hour" } } })),
    refetchInterval: 60000,
  });
  const offers = useQuery({
    queryKey: ["offers", "explorer"],
    queryFn: () => unwrap(api.GET("/api/v1/offers", { params: { query: { limit: 50, sort: "price" } } })),
    refetchInterval: 10000,
  });
  const supplySeries = useMemo(() => sumByPeriod(gpuRows((supply.data?.rows ?? []) as Row[]), ["gpus_online", "gpus_rented"]), [supply.data]);
  const priceSeries = useMemo(() => pivot(gpuRows((prices.data?.rows ?? []) as Row[]), "gpu_model", "median_micro", 1e-6), [prices.data]);

  return (
    <div className="space-y-6">
      <PageHeader title="Pool explorer" description="What is online right now, at what price, and how busy it is. Updated every few seconds." />
      <QueryView query={query} loadingLabel="Reading the pool…">
        {(pool) => (
          <>
            <div className="grid grid-cols-2 gap-4 lg:grid-cols-4">
              <Stat label="GPUs online" value={pool.gpus_online} hint={plural(pool.gpu_devices_online, "machine")} />
              <Stat label="GPU utilisation" value={formatPercent(pool.avg_gpu_utilization_pct)} hint="average over online GPUs" />
              <Stat label="CPU machines" value={pool.cpu_devices_online} hint={plural(pool.cpu_cores_online, "core")} />
              <Stat label="CPU load" value={formatPercent(pool.avg_cpu_percent)} hint={`as of ${formatDateTime(pool.computed_at)}`} />
            </div>
            <Card title="GPUs online by model and region">
              <Table
                caption="GPUs online by model and region"
                rows={pool.by_model_region}
                rowKey={(g) => `${g.gpu_model}-${g.region}`}
                empty={<EmptyState title="No GPUs online right now">Machines appear here as soon as their agents connect and pass verification. Have a GPU? Sign up as a provider.</EmptyState>}
                columns={[
                  { key: "m", header: "Model", render: (g) => g.gpu_model },
                  { key: "r", header: "Region", render: (g) => g.region ?? "—" },
                  { key: "g", header: "GPUs", className: "text-right", render: (g) => g.gpus },
                  { key: "d", header: "Machines", className: "text-right", render: (g) => g.devices },
                  { key: "p", header: "From (listed)", className: "text-right", render: (g) => formatRate(g.min_price_per_gpu_hour_micro, "GPU·h") },
                  { key: "u", header: "Utilisation", className: "text-right", render: (g) => formatPercent(g.avg_utilization_pct) },
                ]}
              />
              {pool.by_model_region.length > 0 && (
                <div className="mt-4">
                  <BarChartView
                    label="GPUs online per model"
                    xKey="model"
                    data={aggregateModels(pool.by_model_region)}
                    series={[{ key: "gpus", label: "GPUs online" }]}
                  />
                </div>
              )}
            </Card>
          </>
        )}
      </QueryView>
      <Card title="Bookable now">
        <QueryView query={offers}>
          {(o) => (
            <>
            <Table
              caption="Machines bookable now"
              rows={o.offers}
              rowKey={(x) => x.device_id}
              empty={<EmptyState title="Nothing is free right now">Every online machine is rented, or none is online. Check back in a few minutes.</EmptyState>}
              columns={[
                { key: "d", header: "Machine", render: (x) => <Link className="text-brand-700 underline" to={`/devices/${x.device_id}`}>{x.device_id.slice(0, 8)}</Link> },
                { key: "h", header: "Hardware", render: (x) => (x.gpu_model ? `${x.gpu_count} × ${x.gpu_model}` : "CPU") },
                { key: "r", header: "Region", render: (x) => `${x.region} · ${x.country}` },
                { key: "p", header: "Listed price", className: "text-right", render: (x) => formatRate(x.price_per_gpu_hour_micro, rateUnit(x.gpu_model)) },
                { key: "rel", header: "Reliability", className: "text-right", render: (x) => formatPercent(x.reliability * 100, 1) },
                { key: "s", header: "Proof score", className: "text-right", render: (x) => x.verified_score.toFixed(2) },
              ]}
            />
            {feeNote(o.platform_fee_bps) && <p className="mt-2 text-xs text-slate-600" data-testid="fee-note">{feeNote(o.platform_fee_bps)}</p>}
            </>
          )}
        </QueryView>
      </Card>
      <Card title="Live (this page)">
        {samples.length < 2 ? (
          <p className="text-sm text-slate-600">Collecting samples every 5 s…</p>
        ) : (
          <div className="grid gap-6 lg:grid-cols-2">
            <div>
              <h3 className="mb-2 text-sm font-medium text-slate-800">GPUs and CPU machines online</h3>
              <TimeSeriesChart label="GPUs and CPU machines online over the last minutes" height={200} counts data={samples} series={[{ key: "gpus", label: "GPUs online" }, { key: "cpus", label: "CPU machines" }]} />
            </div>
            <div>
              <h3 className="mb-2 text-sm font-medium text-slate-800">GPU utilisation (%)</h3>
              <TimeSeriesChart label="GPU utilisation over the last minutes" height={200} unit="%" data={samples} series={[{ key: "util", label: "GPU utilisation %" }]} />
            </div>
          </div>
        )}
      </Card>
      <Card title="History" actions={<div className="w-40"><SelectField label="Window" value={days} onChange={(e) => setDays(e.target.value)}><option value="1">24 hours</option><option value="7">7 days</option><option value="30">30 days</option></SelectField></div>}>
        <div className="grid gap-6 lg:grid-cols-2">
          <div>
            <h3 className="mb-2 text-sm font-medium text-slate-800">GPUs online and rented</h3>
            <QueryView query={supply}>
              {() => (supplySeries.length ? <TimeSeriesChart label="GPUs online and rented over time" data={supplySeries} xFormat={dayTick} series={[{ key: "gpus_online", label: "online" }, { key: "gpus_rented", label: "rented" }]} /> : <EmptyState title="No history yet">History builds up from hourly rollups.</EmptyState>)}
            </QueryView>
          </div>
          <div>
            <h3 className="mb-2 text-sm font-medium text-slate-800">Median price paid per GPU·h (USDC)</h3>
            <QueryView query={prices}>
              {() => (priceSeries.rows.length ? <TimeSeriesChart label="Median price per GPU hour over time" data={priceSeries.rows} xFormat={dayTick} series={priceSeries.keys.map((k) => ({ key: k, label: k }))} /> : <EmptyState title="No rentals in this window">Prices appear once GPUs have been rented.</EmptyState>)}
            </QueryView>
          </div>
        </div>
        <p className="mt-2 text-xs text-slate-600">Prices in USDC; history from hourly rollups.</p>
      </Card>
    </div>
  );
}

function dayTick(v: number | string): string {
  const d = new Date(v);
  return Number.isNaN(d.getTime()) ? String(v) : d.toLocaleString("en-GB", { month: "short", day: "numeric", hour: "2-digit", timeZone: "UTC" });
}

function aggregateModels(groups: { gpu_model: string; gpus: number }[]) {
  const m = new Map<string, number>();
  for (const g of groups) m.set(g.gpu_model, (m.get(g.gpu_model) ?? 0) + g.gpus);
  return [...m].map(([model, gpus]) => ({ model, gpus }));
}

/** The rows of GPU models only. The analytics reports count a CPU device as one unit under the
 *  model "cpu", which a "GPUs online" chart would plot as fractions of a GPU. */
export function gpuRows(rows: Row[]): Row[] {
  return rows.filter((r) => r.gpu_model !== "cpu");
}

/** Rows per period with `keys` summed over models and regions. */
export function sumByPeriod(rows: Row[], keys: string[]): Row[] {
  const by = new Map<string, Row>();
  for (const r of rows) {
    const t = String(r.period);
    const acc = by.get(t) ?? { t: new Date(t).getTime() };
    for (const k of keys) acc[k] = Number(acc[k] ?? 0) + Number(r[k] ?? 0);
    by.set(t, acc);
  }
  return [...by.values()].sort((a, b) => Number(a.t) - Number(b.t));
}

/** One row per period, one column per `by` value. */
export function pivot(rows: Row[], by: string, value: string, scale = 1): { rows: Row[]; keys: string[] } {
  const keys = new Set<string>();
  const out = new Map<string, Row>();
  for (const r of rows) {
    const t = String(r.period);
    const k = String(r[by] ?? "CPU");
    keys.add(k);
    const acc = out.get(t) ?? { t: new Date(t).getTime() };
    acc[k] = r[value] === null ? null : Number(r[value]) * scale;
    out.set(t, acc);
  }
  return { rows: [...out.values()].sort((a, b) => Number(a.t) - Number(b.t)), keys: [...keys] };
}
