import { keepPreviousData, useMutation, useQuery, useQueryClient } from "@tanstack/react-query";
import { useState, type FormEvent } from "react";
import { api, unwrap, type Schemas } from "@/api/client";
import { Button } from "@/components/Button";
import { Card, PageHeader, Stat } from "@/components/Card";
import { SelectField, TextField } from "@/components/Field";
import { formatDateTime, shortId } from "@/components/format";
import { formatRate } from "@/components/money";
import { StatusBadge } from "@/components/StatusBadge";
import { EmptyState, ErrorState, Notice, QueryView } from "@/components/States";
import { Table } from "@/components/Table";
import { describeReason, hardwareSummary, STATUS_HELP } from "@/pages/provider/lib";

type Device = Schemas["DeviceOut"];
type Status = Schemas["DeviceStatus"];
const STATUSES: Status[] = ["pending", "verifying", "online", "busy", "offline", "disabled", "rejected", "draining", "drained"];
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

export default function AdminDevices() {
  const [status, setStatus] = useState<Status | "">("");
  const [provider, setProvider] = useState("");
  const [providerFilter, setProviderFilter] = useState("");
  const devices = useQuery({
    queryKey: ["admin", "devices", status, providerFilter],
    queryFn: () =>
      unwrap(api.GET("/api/v1/internal/devices", { params: { query: { status: status || undefined, provider_id: providerFilter || undefined, limit: 1000 } } })),
    refetchInterval: 5000,
    placeholderData: keepPreviousData,
  });
  const sweeper = useQuery({ queryKey: ["admin", "sweeper"], queryFn: () => unwrap(api.GET("/api/v1/internal/devices/sweeper")), refetchInterval: 10000 });
  const providerError = provider.trim() && !UUID.test(provider.trim()) ? "A provider user id (UUID)" : undefined;
  const submit = (e: FormEvent) => {
    e.preventDefault();
    if (!providerError) setProviderFilter(provider.trim());
  };

  return (
    <div className="space-y-6">
      <PageHeader title="Devices" description="Every device in the fleet. Disable takes a device out at once; drain lets its cluster nodes finish first." />
      {sweeper.data && (
        <div className="grid grid-cols-1 gap-3 sm:grid-cols-3">
          <Stat label="Watched by the sweeper" value={sweeper.data.tracked} />
          <Stat label="Storm hold" value={sweeper.data.storm ? "Active" : "None"} hint={sweeper.data.storm ? String(sweeper.data.storm.message ?? "") : "offline marking works normally"} />
          <Stat label="Fleet events" value={sweeper.data.events.length} hint={sweeper.data.events[0] ? sweeper.data.events[0].message : "none recently"} />
        </div>
      )}
      <Card title="Filters">
        <form onSubmit={submit} className="grid gap-4 sm:grid-cols-3" aria-label="Device filters">
          <SelectField label="Status" value={status} onChange={(e) => setStatus(e.target.value as Status | "")}>
            <option value="">Any status</option>
            {STATUSES.map((s) => (
              <option key={s} value={s}>
                {s}
              </option>
            ))}
          </SelectField>
          <TextField label="Provider id" value={provider} onChange={(e) => setProvider(e.target.value)} error={providerError} placeholder="UUID" />
          <div className="flex items-end">
            <Button type="submit" variant="secondary">
              Apply
            </Button>
          </div>
        </form>
      </Card>
      <QueryView query={devices} loadingLabel="Loading devices…">
        {(rows) => (
          <Table<Device>
            caption="All devices with their status and operator actions"
            rows={rows}
            rowKey={(d) => d.id}
            empty={<EmptyState title="No devices match">Change the filters, or wait for providers to add devices.</EmptyState>}
            columns={[
              {
                key: "device",
                header: "Device",
                render: (d) => (
                  <span className="flex flex-col">
                    <span className="font-medium">{d.name}</span>
                    <code className="text-xs text-slate-600">{d.id}</code>
                  </span>
                ),
              },
              {
                key: "status",
                header: "Status",
                render: (d) => (
                  <span className="flex flex-col items-start gap-0.5">
                    <StatusBadge status={d.status} title={STATUS_HELP[d.status]} />
                    {d.status_reason && <span className="text-xs text-slate-600">{describeReason(d.status_reason)}</span>}
                  </span>
                ),
              },
              { key: "hw", header: "Hardware", render: (d) => hardwareSummary(d) },
              { key: "provider", header: "Provider", render: (d) => <code className="text-xs">{shortId(d.provider_id)}</code> },
              { key: "price", header: "Price", render: (d) => formatRate(d.price_per_gpu_hour_micro, d.gpu_count > 0 ? "GPU·h" : "h") },
              { key: "seen", header: "Last seen", render: (d) => formatDateTime(d.last_seen_at) },
              { key: "actions", header: "Actions", render: (d) => <DeviceActions device={d} /> },
            ]}
          />
        )}
      </QueryView>
    </div>
  );
}

/** Disable / enable, verify, drain / undrain one device; drain and disable ask first. */
export function DeviceActions({ device }: { device: Device }) {
  const queryClient = useQueryClient();
  const [asking, setAsking] = useState<"drain" | "disable" | null>(null);
  const [reason, setReason] = useState("");
  const path = { params: { path: { device_id: device.id } } };
  const done = () => {
    setAsking(null);
    setReason("");
    void queryClient.invalidateQueries({ queryKey: ["admin", "devices"] });
  };
  const action = useMutation({
    mutationFn: async (kind: "disable" | "enable" | "verify" | "drain" | "undrain") => {
      switch (kind) {
        case "disable":
          return unwrap(api.POST("/api/v1/internal/devices/{device_id}/disable", path));
        case "enable":
          return unwrap(api.POST("/api/v1/internal/devices/{device_id}/enable", path));
        case "verify":
          return unwrap(api.POST("/api/v1/internal/devices/{device_id}/verify", path));
        case "drain":
          return unwrap(api.POST("/api/v1/internal/ops/devices/{device_id}/drain", { ...path, body: { reason: reason.trim() } }));
        case "undrain":
          return unwrap(api.POST("/api/v1/internal/ops/devices/{device_id}/undrain", path));
      }
    },
    onSuccess: done,
  });
  const draining = device.status === "draining" || device.status === "drained";
  const name = device.name;
  if (asking) {
    return (
      <form
        className="flex min-w-64 flex-col gap-2"
        aria-label={`${asking === "drain" ? "Drain" : "Disable"} ${name}`}
        onSubmit={(e) => {
          e.preventDefault();
          action.mutate(asking);
        }}
      >
        {asking === "drain" && <TextField label={`Reason for draining ${name}`} maxLength={200} value={reason} onChange={(e) => setReason(e.target.value)} hint="Kept in the events and audit log" />}
        {asking === "disable" && <p className="text-sm whitespace-normal text-slate-700">Disable {name} now? A running cluster node on it is lost.</p>}
        <div className="flex gap-2">
          <Button type="submit" variant="danger" loading={action.isPending}>
            {asking === "drain" ? "Drain" : "Disable"}
          </Button>
          <Button variant="ghost" onClick={() => setAsking(null)}>
            Cancel
          </Button>
        </div>
        {action.error && <ErrorState title="Action failed" error={action.error} />}
      </form>
    );
  }
  return (
    <div className="flex flex-col gap-1">
      <div className="flex flex-wrap gap-1">
        {device.status !== "disabled" ? (
          <Button variant="secondary" className="px-2 py-1" onClick={() => setAsking("disable")} aria-label={`Disable ${name}`}>
            Disable
          </Button>
        ) : (
          <Button variant="secondary" className="px-2 py-1" onClick={() => action.mutate("enable")} loading={action.isPending} aria-label={`Enable ${name}`}>
            Enable
          </Button>
        )}
        {draining ? (
          <Button variant="secondary" className="px-2 py-1" onClick={() => action.mutate("undrain")} loading={action.isPending} aria-label={`Undrain ${name}`}>
            Undrain
          </Button>
        ) : (
          ["online", "busy", "offline"].includes(device.status) && (
            <Button variant="secondary" className="px-2 py-1" onClick={() => setAsking("drain")} aria-label={`Drain ${name}`}>
              Drain
            </Button>
          )
        )}
        <Button variant="ghost" className="px-2 py-1" onClick={() => action.mutate("verify")} loading={action.isPending} aria-label={`Verify ${name}`} disabled={device.status === "busy"}>
          Verify
        </Button>
      </div>
      {action.isSuccess && action.variables === "verify" && <Notice tone="info">Verification requested.</Notice>}
      {action.error && <ErrorState title="Action failed" error={action.error} />}
    </div>
  );
}
