import { useQuery } from "@tanstack/react-query";
import { useParams } from "react-router";
import { ApiError, api, unwrap } from "@/api/client";
import { Card, PageHeader, Stat } from "@/components/Card";
import { BarChartView } from "@/components/charts";
import { formatDateTime, formatMb, formatPercent, uptimeLabel } from "@/components/format";
import { rateUnit } from "@/components/hardware";
import { formatRate } from "@/components/money";
import { EmptyState, ErrorState, Loading } from "@/components/States";
import { StatusBadge } from "@/components/StatusBadge";

/** A machine of the pool as anyone may see it: proof score, reliability, 30-day uptime. */
export default function DevicePage() {
  const { deviceId = "" } = useParams();
  const device = useQuery({
    queryKey: ["public-device", deviceId],
    queryFn: () => unwrap(api.GET("/api/v1/public/devices/{device_id}", { params: { path: { device_id: deviceId } } })),
    refetchInterval: 30000,
  });
  if (device.isPending) return <Loading />;
  if (device.error) {
    const missing = device.error instanceof ApiError && (device.error.status === 404 || device.error.status === 422);
    return missing ? (
      <EmptyState title="No such machine">The link may be mistyped, or the machine has left the pool. The pool explorer lists what is online.</EmptyState>
    ) : (
      <ErrorState error={device.error} retry={() => void device.refetch()} />
    );
  }
  const d = device.data;
  const days = d.uptime_by_day.map((u) => ({ day: u.day.slice(5, 10), uptime: u.uptime_pct }));
  return (
    <div className="space-y-6">
      <PageHeader
        title={`Machine ${d.id.slice(0, 8)}`}
        description={
          <span className="inline-flex flex-wrap items-center gap-2">
            <StatusBadge status={d.status} /> {d.region ?? "unknown region"}
            {d.country ? ` · ${d.country}` : ""} · listed since {formatDateTime(d.listed_since)}
          </span>
        }
      />
      <div className="grid grid-cols-2 gap-4 lg:grid-cols-4">
        <Stat label="Hardware" value={d.gpu_model ? `${d.gpu_count} × ${d.gpu_model}` : `${d.cpu_cores} CPU cores`} hint={d.vram_mb_per_gpu ? `${formatMb(d.vram_mb_per_gpu)} per GPU` : undefined} />
        <Stat label="Proof score" value={d.verified_score === null ? "—" : d.verified_score.toFixed(2)} hint={d.verified_at ? `proof of compute, ${formatDateTime(d.verified_at)}` : "not verified yet"} />
        <Stat label="Reliability" value={formatPercent(d.reliability * 100, 1)} hint={`connectivity tier ${d.connectivity_tier ?? "—"}`} />
        <Stat label={uptimeLabel(d.listed_since)} value={formatPercent(d.uptime_30d_pct, 1)} hint={`listed ${formatRate(d.price_per_gpu_hour_micro, rateUnit(d.gpu_model))}, before the platform fee`} />
      </div>
      <Card title="Uptime per day (last 30 days)">
        {days.length ? (
          <BarChartView label="Uptime percentage per day over the last 30 days" data={days} xKey="day" unit="%" series={[{ key: "uptime", label: "Uptime %" }]} />
        ) : (
          <EmptyState title="No uptime recorded yet">Uptime is counted from the machine's heartbeats.</EmptyState>
        )}
      </Card>
    </div>
  );
}
