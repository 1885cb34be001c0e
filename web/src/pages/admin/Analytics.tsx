import { keepPreviousData, useQuery } from "@tanstack/react-query";
import { useState, type FormEvent } from "react";
import { api, download, unwrap } from "@/api/client";
import { Button } from "@/components/Button";
import { Card, PageHeader } from "@/components/Card";
import { BarChartView, TimeSeriesChart } from "@/components/charts";
import { SelectField, TextField } from "@/components/Field";
import { formatDateTime } from "@/components/format";
import { formatUsdc } from "@/components/money";
import { EmptyState, ErrorState, QueryView } from "@/components/States";
import { Table } from "@/components/Table";
import { reportChart } from "./lib";

interface Params {
  name: string;
  since: string;
  until: string;
  grain: "" | "hour" | "day";
  model: string;
  region: string;
}

const isoDay = (d: Date) => d.toISOString().slice(0, 10);

function toQuery(p: Params) {
  return {
    since: p.since ? `${p.since}T00:00:00Z` : undefined,
    until: p.until ? `${p.until}T23:59:59Z` : undefined,
    grain: p.grain || undefined,
    model: p.model.trim() || undefined,
    region: p.region.trim() || undefined,
  };
}

export default function Analytics() {
  const reports = useQuery({ queryKey: ["admin", "analytics"], queryFn: () => unwrap(api.GET("/api/v1/internal/analytics")) });
  const [draft, setDraft] = useState<Params>(() => ({ name: "", since: isoDay(new Date(Date.now() - 7 * 86400_000)), until: "", grain: "", model: "", region: "" }));
  const [applied, setApplied] = useState<Params | null>(null);
  const name = draft.name || reports.data?.[0]?.name || "";
  const submit = (e: FormEvent) => {
    e.preventDefault();
    if (name) setApplied({ ...draft, name });
  };
  const description = reports.data?.find((r) => r.name === name)?.description;

  return (
    <div className="space-y-6">
      <PageHeader title="Platform analytics" description="Reports from the hourly and daily rollups: supply and demand, utilisation, prices, revenue, providers, reliability." />
      <QueryView query={reports} loadingLabel="Loading reports…">
        {(list) =>
          list.length === 0 ? (
            <EmptyState title="No reports available">The analytics module has no reports registered.</EmptyState>
          ) : (
            <Card title="Report">
              <form onSubmit={submit} className="grid gap-4 sm:grid-cols-3" aria-label="Report parameters">
                <SelectField label="Report" value={name} onChange={(e) => setDraft({ ...draft, name: e.target.value })} hint={description}>
                  {list.map((r) => (
                    <option key={r.name} value={r.name}>
                      {r.name.replace(/_/g, " ")}
                      {r.public ? " (public)" : ""}
                    </option>
                  ))}
                </SelectField>
                <TextField label="From (UTC date)" type="date" value={draft.since} onChange={(e) => setDraft({ ...draft, since: e.target.value })} />
                <TextField label="To (UTC date)" type="date" value={draft.until} onChange={(e) => setDraft({ ...draft, until: e.target.value })} hint="Empty: up to now" />
                <SelectField label="Grain" value={draft.grain} onChange={(e) => setDraft({ ...draft, grain: e.target.value as Params["grain"] })}>
                  <option value="">Default</option>
                  <option value="hour">Hour</option>
                  <option value="day">Day</option>
                </SelectField>
                <TextField label="GPU model" value={draft.model} onChange={(e) => setDraft({ ...draft, model: e.target.value })} placeholder="any" />
                <TextField label="Region" value={draft.region} onChange={(e) => setDraft({ ...draft, region: e.target.value })} placeholder="any" />
                <div className="sm:col-span-3">
                  <Button type="submit">Run report</Button>
                </div>
              </form>
            </Card>
          )
        }
      </QueryView>
      {applied ? (
        <ReportView params={applied} />
      ) : (
        reports.data?.length ? <EmptyState title="Pick a report and run it">The default window is the last 7 days.</EmptyState> : null
      )}
    </div>
  );
}

function ReportView({ params }: { params: Params }) {
  const query = toQuery(params);
  const report = useQuery({
    queryKey: ["admin", "analytics", params],
    queryFn: () => unwrap(api.GET("/api/v1/internal/analytics/{name}", { params: { path: { name: params.name }, query } })),
    placeholderData: keepPreviousData,
  });
  const [csvError, setCsvError] = useState<unknown>(null);
  const csv = () => {
    const qs = new URLSearchParams({ format: "csv" });
    for (const [k, v] of Object.entries(query)) if (v) qs.set(k, v);
    setCsvError(null);
    download(`/api/v1/internal/analytics/${params.name}?${qs}`, `${params.name}.csv`).catch(setCsvError);
  };
  return (
    <Card
      title={params.name.replace(/_/g, " ")}
      actions={
        <Button variant="secondary" onClick={csv}>
          Download CSV
        </Button>
      }
    >
      {csvError ? <ErrorState title="Download failed" error={csvError} /> : null}
      <QueryView query={report} loadingLabel="Running the report…">
        {(r) => {
          const chart = reportChart(r.columns, r.rows);
          const label = `${params.name.replace(/_/g, " ")} from ${formatDateTime(r.since)} to ${formatDateTime(r.until)}`;
          return (
            <div className="space-y-4">
              <p className="text-sm text-slate-600">
                {formatDateTime(r.since)} – {formatDateTime(r.until)}, by {r.grain}; {r.rows.length} rows.
              </p>
              {r.rows.length === 0 ? (
                <EmptyState title="No data in this window">Widen the time window or remove the model and region filters.</EmptyState>
              ) : (
                <>
                  {chart &&
                    (chart.xKey === "period" ? (
                      <TimeSeriesChart
                        label={label}
                        data={chart.data.map((d) => ({ ...d, period: Date.parse(String(d.period)) }))}
                        xKey="period"
                        series={chart.series.map((s) => ({ key: s, label: s.replace(/_/g, " ") }))}
                        xFormat={(v) => formatDateTime(new Date(Number(v)).toISOString())}
                      />
                    ) : (
                      <BarChartView label={label} data={chart.data} xKey={chart.xKey} series={chart.series.map((s) => ({ key: s, label: s.replace(/_/g, " ") }))} />
                    ))}
                  <Table<Record<string, unknown>>
                    caption={`${params.name} rows`}
                    rows={r.rows}
                    rowKey={(row) => r.rows.indexOf(row)}
                    columns={r.columns.map((c) => ({ key: c, header: c.replace(/_/g, " "), render: (row) => cell(c, row[c]) }))}
                  />
                </>
              )}
            </div>
          );
        }}
      </QueryView>
    </Card>
  );
}

function cell(column: string, value: unknown): string {
  if (value === null || value === undefined) return "—";
  if (typeof value === "number" && column.endsWith("_micro")) return formatUsdc(value);
  if (typeof value === "number") return Number.isInteger(value) ? value.toLocaleString("en-US") : value.toFixed(3);
  return String(value);
}
