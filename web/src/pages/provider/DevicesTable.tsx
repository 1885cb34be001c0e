import { Link } from "react-router";
import { formatDateTime, formatPercent } from "@/components/format";
import { formatRate } from "@/components/money";
import { StatusBadge } from "@/components/StatusBadge";
import { Table, type Column } from "@/components/Table";
import { describeReason, hardwareSummary, STATUS_HELP, type Device } from "./lib";

/** The provider's devices with their live status; names link to the device page. */
export function DevicesTable({ devices, linkTo = (d) => `/provider/devices/${d.id}`, caption = "Your devices" }: { devices: Device[]; linkTo?: (d: Device) => string; caption?: string }) {
  const columns: Column<Device>[] = [
    {
      key: "name",
      header: "Device",
      render: (d) => (
        <Link to={linkTo(d)} className="font-medium text-brand-700 underline-offset-2 hover:underline">
          {d.name}
        </Link>
      ),
    },
    {
      key: "status",
      header: "Status",
      render: (d) => (
        <span className="flex flex-col gap-0.5">
          <StatusBadge status={d.status} title={STATUS_HELP[d.status]} />
          {d.status_reason && d.status_reason !== "created" && (
            <span className="max-w-64 truncate text-xs text-slate-600" title={describeReason(d.status_reason)}>
              {describeReason(d.status_reason)}
            </span>
          )}
        </span>
      ),
    },
    { key: "hw", header: "Hardware", render: (d) => hardwareSummary(d) },
    { key: "price", header: "Price", render: (d) => formatRate(d.price_per_gpu_hour_micro, d.gpu_count > 0 ? "GPU·h" : "node·h") },
    { key: "score", header: "Verified score", render: (d) => (d.verified_score === null ? "—" : d.verified_score.toFixed(2)) },
    { key: "reliability", header: "Reliability", render: (d) => formatPercent(d.reliability * 100, 1) },
    { key: "seen", header: "Last seen", render: (d) => formatDateTime(d.last_seen_at) },
  ];
  return (
    <div data-testid="devices-table">
      <Table columns={columns} rows={devices} rowKey={(d) => d.id} caption={caption} />
    </div>
  );
}

/** Counts by status for the summary line above the table. */
export function statusCounts(devices: Pick<Device, "status">[]): Record<string, number> {
  const out: Record<string, number> = {};
  for (const d of devices) out[d.status] = (out[d.status] ?? 0) + 1;
  return out;
}
