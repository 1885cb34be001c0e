import { useMutation, useQuery } from "@tanstack/react-query";
import { useEffect, useMemo, useState } from "react";
import { useNavigate } from "react-router";
import { api, unwrap, type Schemas } from "@/api/client";
import { Button } from "@/components/Button";
import { Card, PageHeader } from "@/components/Card";
import { SelectField, TextField } from "@/components/Field";
import { clusterHardware, plural, rateUnit, unitName } from "@/components/hardware";
import { feeNote, formatFeeBps, formatRate, formatUsdc, parseUsdc } from "@/components/money";
import { formatDuration, formatPercent, shortId } from "@/components/format";
import { EmptyState, ErrorState, Loading, Notice } from "@/components/States";
import { Table } from "@/components/Table";

type ClusterRequest = Schemas["ClusterRequest"];
type Quote = Schemas["QuoteOut"];

const CPU = "__cpu__";

interface Filters {
  hardware: string; // gpu model, CPU, or "" (any GPU)
  region: string;
  minVramGb: string;
  maxPrice: string;
  minReliability: string;
  minVerified: string;
}

const initialFilters: Filters = { hardware: "", region: "", minVramGb: "", maxPrice: "", minReliability: "0", minVerified: "0" };

/** Seconds left until `iso`, ticking every second. */
export function useCountdown(iso: string | undefined): number | null {
  const [now, setNow] = useState(() => Date.now());
  useEffect(() => {
    if (!iso) return;
    const t = setInterval(() => setNow(Date.now()), 1000);
    return () => clearInterval(t);
  }, [iso]);
  return iso ? Math.max(0, Math.floor((new Date(iso).getTime() - now) / 1000)) : null;
}

export default function Deploy() {
  const navigate = useNavigate();
  const [filters, setFilters] = useState<Filters>(initialFilters);
  const [autoscale, setAutoscale] = useState(false);
  const [units, setUnits] = useState("1");
  const [minUnits, setMinUnits] = useState("1");
  const [maxUnits, setMaxUnits] = useState("2");
  const [hours, setHours] = useState("1");
  const [budget, setBudget] = useState("");
  const [name, setName] = useState("my-cluster");
  const [quote, setQuote] = useState<Quote | null>(null);

  const isCpu = filters.hardware === CPU;
  const set = (k: keyof Filters) => (e: { target: { value: string } }) => {
    setFilters((f) => ({ ...f, [k]: e.target.value }));
    setQuote(null);
  };

  // Live bookable counts for the current filters (all models: the model picker shows them).
  const offerQuery = {
    region: filters.region || undefined,
    // GPU memory means nothing for a CPU node: a value typed before picking CPU must not hide CPU offers.
    min_vram_mb: !isCpu && filters.minVramGb ? Math.round(Number(filters.minVramGb) * 1024) : undefined,
    max_price_per_gpu_hour_micro: filters.maxPrice ? (parseUsdc(filters.maxPrice) ?? undefined) : undefined,
    min_reliability: Number(filters.minReliability) || undefined,
    min_verified_score: Number(filters.minVerified) || undefined,
    limit: 200,
  };
  const offers = useQuery({
    queryKey: ["offers", offerQuery],
    queryFn: () => unwrap(api.GET("/api/v1/offers", { params: { query: offerQuery } })),
    refetchInterval: 5000,
  });
  const regions = useMemo(() => [...new Set((offers.data?.offers ?? []).map((o) => o.region))].sort(), [offers.data]);
  const groups = offers.data?.groups ?? [];
  const selectedGroup = groups.find((g) => (g.gpu_model ?? CPU) === filters.hardware);

  const request = (): ClusterRequest | string => {
    const duration_s = Math.round(Number(hours) * 3600);
    if (!Number.isFinite(duration_s) || duration_s < 60) return "Duration must be at least one minute.";
    const n = Number(units), lo = Number(minUnits), hi = Number(maxUnits);
    const req: ClusterRequest = {
      duration_s,
      regions: filters.region ? [filters.region] : [],
      min_vram_mb: offerQuery.min_vram_mb ?? 0,
      max_price_per_gpu_hour_micro: offerQuery.max_price_per_gpu_hour_micro ?? null,
      min_reliability: Number(filters.minReliability) || 0,
      min_verified_score: Number(filters.minVerified) || 0,
    };
    if (!filters.hardware) return "Choose the hardware first.";
    if (autoscale) {
      if (!(lo >= 1 && hi >= lo)) return "Autoscaling needs 1 ≤ minimum ≤ maximum.";
      req.min_gpus = lo;
      req.max_gpus = hi;
    }
    if (isCpu) {
      req.nodes = autoscale ? lo : n;
      if (!autoscale && !(n >= 1)) return "A CPU cluster needs at least one node.";
    } else {
      req.gpu_model = filters.hardware;
      req.gpus = autoscale ? lo : n;
      if (!autoscale && !(n >= 1)) return "Ask for at least one GPU.";
    }
    return req;
  };

  const quoteMutation = useMutation({
    mutationFn: async () => {
      const req = request();
      if (typeof req === "string") throw new Error(req);
      return unwrap(api.POST("/api/v1/quotes", { body: req }));
    },
    onSuccess: setQuote,
  });

  const budgetMicro = budget ? parseUsdc(budget) : null;
  const createMutation = useMutation({
    mutationFn: async () => {
      if (!quote) throw new Error("Get a quote first.");
      if (budget && budgetMicro === null) throw new Error("The budget is not an amount of USDC.");
      return unwrap(api.POST("/api/v1/clusters", { body: { name, quote_id: quote.id, budget_micro: budgetMicro ?? null } }));
    },
    onSuccess: (cluster) => navigate(`/app/clusters/${cluster.id}`),
  });

  const left = useCountdown(quote?.expires_at);
  const expired = left !== null && left <= 0;
  const unitLabel = unitName(isCpu ? "cpu" : filters.hardware ? "gpu" : null);
  const fee = offers.data?.platform_fee_bps;

  return (
    <div className="space-y-6">
      <PageHeader title="Deploy a cluster" description="Pick hardware, size and duration; get a price that holds for a few minutes; deploy." />
      <div className="grid gap-6 lg:grid-cols-3">
        <div className="min-w-0 space-y-6 lg:col-span-2">
          <Card title="1. Hardware">
            <div className="grid gap-4 sm:grid-cols-2 lg:grid-cols-3">
              <SelectField label="Region" value={filters.region} onChange={set("region")}>
                <option value="">Any region</option>
                {regions.map((r) => (
                  <option key={r} value={r}>
                    {r}
                  </option>
                ))}
              </SelectField>
              {!isCpu && (
                <TextField label="Min GPU memory (GB)" inputMode="numeric" value={filters.minVramGb} onChange={set("minVramGb")} placeholder="any" />
              )}
              <TextField label={`Max listed price per ${rateUnit(isCpu ? null : "gpu")} (USDC)`} inputMode="decimal" value={filters.maxPrice} onChange={set("maxPrice")} placeholder="any" />
              <SelectField label="Min reliability" value={filters.minReliability} onChange={set("minReliability")}>
                <option value="0">Any</option>
                <option value="0.9">90%</option>
                <option value="0.95">95%</option>
                <option value="0.99">99%</option>
              </SelectField>
              <SelectField label="Min proof-of-compute score" value={filters.minVerified} onChange={set("minVerified")}>
                <option value="0">Any</option>
                <option value="0.5">0.5</option>
                <option value="0.8">0.8</option>
                <option value="0.95">0.95</option>
              </SelectField>
            </div>
            <div className="mt-4" aria-live="polite">
              {offers.isPending ? (
                <Loading label="Counting bookable machines…" />
              ) : offers.error ? (
                <ErrorState error={offers.error} retry={() => void offers.refetch()} />
              ) : groups.length === 0 ? (
                <EmptyState title="Nothing bookable matches these filters">Relax a filter (region, memory, price), or check the pool explorer for what is online.</EmptyState>
              ) : (
                <fieldset>
                  <legend className="mb-2 text-sm font-medium text-slate-800">Model (live bookable counts)</legend>
                  <div className="grid gap-2 sm:grid-cols-2">
                    {groups.map((g) => {
                      const key = g.gpu_model ?? CPU;
                      const checked = filters.hardware === key;
                      return (
                        <label
                          key={key}
                          className={`flex cursor-pointer items-center justify-between gap-3 rounded-md border p-3 text-sm ${checked ? "border-brand-600 bg-brand-50" : "border-slate-200 bg-white"}`}
                        >
                          <span className="flex items-center gap-2">
                            <input type="radio" name="hardware" value={key} checked={checked} onChange={set("hardware")} />
                            <span className="font-medium text-slate-900">{g.gpu_model ?? "CPU only"}</span>
                          </span>
                          <span className="text-right text-slate-700" data-testid={`bookable-${key}`}>
                            {g.gpu_model ? plural(g.bookable_gpus, "GPU") : plural(g.bookable_devices, "CPU node")} bookable
                            <br />
                            <span className="text-xs">
                              from {formatRate(g.min_price_per_gpu_hour_micro, rateUnit(g.gpu_model))}
                              {fee ? ` + ${formatFeeBps(fee)} fee` : ""}
                            </span>
                          </span>
                        </label>
                      );
                    })}
                  </div>
                  {feeNote(fee) && (
                    <p className="mt-2 text-xs text-slate-600" data-testid="fee-note">
                      {feeNote(fee)}
                    </p>
                  )}
                </fieldset>
              )}
            </div>
          </Card>

          <Card title="2. Size and duration">
            <div className="space-y-4">
              <label className="flex items-center gap-2 text-sm text-slate-800">
                <input type="checkbox" checked={autoscale} onChange={(e) => { setAutoscale(e.target.checked); setQuote(null); }} />
                Autoscale between a minimum and a maximum number of {unitLabel}
              </label>
              <div className="grid gap-4 sm:grid-cols-3">
                {autoscale ? (
                  <>
                    <TextField label={`Minimum ${unitLabel}`} type="number" min={1} value={minUnits} onChange={(e) => { setMinUnits(e.target.value); setQuote(null); }} />
                    <TextField label={`Maximum ${unitLabel}`} type="number" min={1} value={maxUnits} onChange={(e) => { setMaxUnits(e.target.value); setQuote(null); }} />
                  </>
                ) : (
                  <TextField
                    label={`Number of ${unitLabel}`}
                    type="number"
                    min={1}
                    value={units}
                    onChange={(e) => { setUnits(e.target.value); setQuote(null); }}
                    hint={selectedGroup ? `${isCpu ? selectedGroup.bookable_devices : selectedGroup.bookable_gpus} bookable now` : undefined}
                  />
                )}
                <TextField label="Duration (hours)" type="number" min={0.1} step={0.5} value={hours} onChange={(e) => { setHours(e.target.value); setQuote(null); }} />
              </div>
              <div className="grid gap-4 sm:grid-cols-2">
                <TextField label="Cluster name" value={name} onChange={(e) => setName(e.target.value)} required maxLength={120} />
                <TextField label="Budget cap (USDC, optional)" inputMode="decimal" value={budget} onChange={(e) => setBudget(e.target.value)} placeholder="no cap" hint="The cluster stops when its spend reaches this." error={budget && budgetMicro === null ? "Not an amount" : undefined} />
              </div>
              {quoteMutation.error && <ErrorState title="No quote" error={quoteMutation.error} />}
              <Button onClick={() => quoteMutation.mutate()} loading={quoteMutation.isPending}>
                Get a quote
              </Button>
            </div>
          </Card>
        </div>

        <div className="min-w-0 space-y-6">
          <Card title="3. Quote">
            {!quote ? (
              <EmptyState title="No quote yet">Choose hardware and size, then “Get a quote”. Prices hold for a few minutes.</EmptyState>
            ) : (
              <QuoteView quote={quote} gpuModel={isCpu ? null : filters.hardware} left={left} hours={Number(hours)} />
            )}
            {quote && (
              <div className="mt-4 space-y-3">
                {expired ? (
                  <Notice tone="warning">This quote expired. Get a new one; prices and machines may have changed.</Notice>
                ) : null}
                {createMutation.error && <ErrorState title="Not deployed" error={createMutation.error} />}
                {expired ? (
                  <Button className="w-full" onClick={() => quoteMutation.mutate()} loading={quoteMutation.isPending}>
                    Get a new quote
                  </Button>
                ) : (
                  <Button className="w-full" onClick={() => createMutation.mutate()} loading={createMutation.isPending}>
                    Deploy for {formatUsdc(quote.total_micro)}
                  </Button>
                )}
              </div>
            )}
          </Card>
        </div>
      </div>
    </div>
  );
}

/** A quote for the hardware picked (`gpuModel`, null on CPU): the quote itself names only its
 *  shape ("1×CPU"), so what it buys is said in the picker's words. */
function QuoteView({ quote, gpuModel, left, hours }: { quote: Quote; gpuModel: string | null; left: number | null; hours: number }) {
  const units = gpuModel ? quote.devices.reduce((n, d) => n + d.gpu_count, 0) : quote.devices.length;
  return (
    <div className="space-y-3 text-sm" data-testid="quote">
      <p className="text-slate-700">
        <span data-testid="quote-hardware">{clusterHardware({ gpu_model: gpuModel, gpus: units })}</span>
        {quote.region ? ` in ${quote.region}` : ""} · {formatDuration(hours * 3600)}
      </p>
      <dl className="grid grid-cols-2 gap-x-3 gap-y-1">
        <dt className="text-slate-600">Listed price per hour</dt>
        <dd className="text-right">{formatUsdc(quote.hourly_micro)}</dd>
        <dt className="text-slate-600">Platform fee per hour</dt>
        <dd className="text-right">{formatUsdc(quote.hourly_fee_micro)}</dd>
        <dt className="text-slate-600">Per hour, with the fee</dt>
        <dd className="text-right font-medium">{formatUsdc(quote.hourly_total_micro)}</dd>
        <dt className="text-slate-600">Compute</dt>
        <dd className="text-right">{formatUsdc(quote.compute_micro)}</dd>
        <dt className="text-slate-600">Fee</dt>
        <dd className="text-right">{formatUsdc(quote.fee_micro)}</dd>
        <dt className="font-medium text-slate-900">Total (held now)</dt>
        <dd className="text-right text-lg font-semibold" data-testid="quote-total">
          {formatUsdc(quote.total_micro)}
        </dd>
      </dl>
      <p className={left !== null && left < 30 ? "font-medium text-amber-800" : "text-slate-600"} aria-live="polite" data-testid="quote-ttl">
        {left !== null && left > 0 ? `Price held for ${formatDuration(left)}` : "Expired"}
      </p>
      <details>
        <summary className="cursor-pointer text-slate-700">{plural(quote.devices.length, "machine")}</summary>
        <Table
          caption="Quoted machines"
          rowKey={(d) => d.device_id}
          rows={quote.devices}
          columns={[
            { key: "d", header: "Machine", render: (d) => shortId(d.device_id) },
            { key: "r", header: "Region", render: (d) => d.region },
            { key: "g", header: "Hardware", render: (d) => (d.gpu_count ? plural(d.gpu_count, "GPU") : "CPU node") },
            { key: "p", header: "Listed per hour", render: (d) => formatUsdc(d.hourly_micro) },
            { key: "s", header: "Score", render: (d) => formatPercent(d.score * 100) },
          ]}
        />
      </details>
      {quote.reasons.length > 0 && (
        <ul className="list-inside list-disc text-xs text-slate-600">
          {quote.reasons.map((r) => (
            <li key={r}>{r}</li>
          ))}
        </ul>
      )}
    </div>
  );
}

