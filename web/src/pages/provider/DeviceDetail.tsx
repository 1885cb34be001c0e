import { useMutation, useQuery, useQueryClient } from "@tanstack/react-query";
import { useState } from "react";
import { useNavigate, useParams } from "react-router";
import { api, unwrap, type Schemas } from "@/api/client";
import { Button, ButtonLink } from "@/components/Button";
import { Card, PageHeader, Stat } from "@/components/Card";
import { TimeSeriesChart } from "@/components/charts";
import { SelectField } from "@/components/Field";
import { formatDateTime, formatPercent, uptimeLabel } from "@/components/format";
import { formatRate } from "@/components/money";
import { StatusBadge } from "@/components/StatusBadge";
import { EmptyState, ErrorState, Loading, Notice, QueryView } from "@/components/States";
import { Table } from "@/components/Table";
import { ConfirmButton } from "./ConfirmButton";
import { JoinCommandPanel } from "./JoinCommandPanel";
import { CONNECTED, describeReason, formatBytes, hardwareSummary, STATUS_HELP, telemetryRows, type Device } from "./lib";
import { PriceForm } from "./PriceForm";
import { fetchDevice, fetchEvents, keys } from "./queries";

type Detail = Schemas["DeviceDetail"];
type DeviceEvent = Schemas["DeviceEventOut"];

export default function DeviceDetail() {
  const { deviceId = "" } = useParams();
  const [hours, setHours] = useState(6);
  const query = useQuery({
    queryKey: [...keys.device(deviceId), hours],
    queryFn: () => fetchDevice(deviceId, hours),
    refetchInterval: (q) => (q.state.data && CONNECTED.has(q.state.data.device.status) ? 5000 : 10000),
  });
  return (
    <div className="space-y-6">
      <QueryView query={query} loadingLabel="Loading the device…">
        {(detail) => (
          <>
            <PageHeader
              title={detail.device.name}
              description={
                <span className="flex flex-wrap items-center gap-2">
                  <StatusBadge status={detail.device.status} /> {STATUS_HELP[detail.device.status] ?? ""}
                </span>
              }
              actions={
                <ButtonLink variant="secondary" to="/provider">
                  All devices
                </ButtonLink>
              }
            />
            <Overview detail={detail} />
            <Telemetry detail={detail} hours={hours} setHours={setHours} />
            <div className="grid gap-6 lg:grid-cols-2">
              <Verification detail={detail} />
              <Card title="Pricing">
                <PriceForm device={detail.device} />
              </Card>
            </div>
            <Events deviceId={deviceId} />
            <Actions device={detail.device} />
          </>
        )}
      </QueryView>
    </div>
  );
}

function Overview({ detail }: { detail: Detail }) {
  const d = detail.device;
  return (
    <div className="grid grid-cols-2 gap-3 md:grid-cols-4">
      <Stat label="Hardware" value={<span className="text-base">{hardwareSummary(d)}</span>} hint={`${d.cpu_cores} CPU cores · ${formatBytes(d.ram_bytes)} RAM`} />
      <Stat label="Price per hour" value={formatRate(detail.hourly_price_micro)} hint="what a customer pays for the device" />
      <Stat label={uptimeLabel(d.created_at)} value={formatPercent(detail.uptime_30d_pct, 1)} hint={`reliability ${formatPercent(d.reliability * 100, 1)}`} />
      <Stat label="Last heartbeat" value={<span className="text-base">{formatDateTime(detail.last_heartbeat_at ?? d.last_seen_at)}</span>} hint={d.agent_version ? `agent ${d.agent_version} · Ray ${d.ray_version ?? "?"}` : "no agent yet"} />
    </div>
  );
}

function Telemetry({ detail, hours, setHours }: { detail: Detail; hours: number; setHours: (h: number) => void }) {
  const rows = telemetryRows(detail.telemetry_history);
  const hasGpu = detail.device.gpu_count > 0;
  return (
    <Card
      title="Telemetry"
      actions={
        <SelectField label="Time range" value={hours} onChange={(e) => setHours(Number(e.target.value))}>
          <option value={1}>Last hour</option>
          <option value={6}>Last 6 hours</option>
          <option value={24}>Last 24 hours</option>
          <option value={168}>Last 7 days</option>
        </SelectField>
      }
    >
      {rows.length === 0 ? (
        <EmptyState title="No telemetry in this range">
          Telemetry arrives with the agent's heartbeats once it has joined. Start the agent on the host, or pick a longer range.
        </EmptyState>
      ) : (
        <div className="grid gap-6 md:grid-cols-2" data-testid="telemetry-charts">
          {hasGpu ? (
            <>
              <ChartBlock title="GPU utilisation (%)">
                <TimeSeriesChart label="GPU utilisation over time, percent" data={rows} series={[{ key: "gpu_util", label: "GPU %" }]} unit="%" />
              </ChartBlock>
              <ChartBlock title="GPU memory used (GiB)">
                <TimeSeriesChart label="GPU memory used over time, GiB" data={rows} series={[{ key: "gpu_mem_gib", label: "GPU memory GiB" }]} />
              </ChartBlock>
              <ChartBlock title="GPU temperature (°C)">
                <TimeSeriesChart label="GPU temperature over time, degrees Celsius" data={rows} series={[{ key: "temp", label: "°C", color: "#b45309" }]} />
              </ChartBlock>
              <ChartBlock title="GPU power (W)">
                <TimeSeriesChart label="GPU power draw over time, watts" data={rows} series={[{ key: "power", label: "Watts", color: "#be123c" }]} />
              </ChartBlock>
            </>
          ) : null}
          <ChartBlock title="CPU (%)">
            <TimeSeriesChart label="CPU utilisation over time, percent" data={rows} series={[{ key: "cpu", label: "CPU %" }]} unit="%" />
          </ChartBlock>
          <ChartBlock title="Memory used (GiB)">
            <TimeSeriesChart label="Host memory used over time, GiB" data={rows} series={[{ key: "mem_gib", label: "RAM GiB" }]} />
          </ChartBlock>
        </div>
      )}
    </Card>
  );
}

function ChartBlock({ title, children }: { title: string; children: React.ReactNode }) {
  return (
    <div>
      <h3 className="mb-1 text-sm font-medium text-slate-800">{title}</h3>
      {children}
    </div>
  );
}

function Verification({ detail }: { detail: Detail }) {
  const queryClient = useQueryClient();
  const v = detail.last_verification;
  const verify = useMutation({
    mutationFn: () => unwrap(api.POST("/api/v1/provider/devices/{device_id}/verify", { params: { path: { device_id: detail.device.id } } })),
    onSuccess: () => void queryClient.invalidateQueries({ queryKey: keys.device(detail.device.id) }),
  });
  const running = v !== null && v !== undefined && v.completed_at === null;
  return (
    <Card
      title="Verification"
      actions={
        <Button variant="secondary" onClick={() => verify.mutate()} loading={verify.isPending} disabled={running || detail.device.status === "busy"}>
          Run verification again
        </Button>
      }
    >
      {!v ? (
        <EmptyState title="Not verified yet">Proof of compute runs when the agent joins. Run the join command on the host.</EmptyState>
      ) : (
        <dl className="grid grid-cols-[max-content_1fr] gap-x-4 gap-y-1 text-sm" data-testid="verification">
          <dt className="text-slate-600">Result</dt>
          <dd>{running ? <Loading label="Proof of compute running…" /> : <StatusBadge status={v.outcome ?? "pending"} />}</dd>
          <dt className="text-slate-600">Reason</dt>
          <dd>
            {v.reason ? (
              <>
                <code className="rounded bg-slate-100 px-1 text-xs">{v.reason}</code> {describeReason(v.reason)}
              </>
            ) : (
              "—"
            )}
          </dd>
          <dt className="text-slate-600">Score</dt>
          <dd>{v.score === null ? "—" : v.score.toFixed(3)}</dd>
          <dt className="text-slate-600">Started</dt>
          <dd>
            {formatDateTime(v.created_at)} ({v.trigger})
          </dd>
          <dt className="text-slate-600">Finished</dt>
          <dd>{formatDateTime(v.completed_at)}</dd>
        </dl>
      )}
      {verify.isSuccess && <Notice tone="info">Verification requested: the agent runs it within a minute.</Notice>}
      {verify.error && <ErrorState title="Could not start verification" error={verify.error} />}
    </Card>
  );
}

function Events({ deviceId }: { deviceId: string }) {
  const query = useQuery({ queryKey: keys.events(deviceId), queryFn: () => fetchEvents(deviceId), refetchInterval: 10000 });
  return (
    <Card title="Status history">
      <QueryView query={query}>
        {(events) => (
          <Table<DeviceEvent>
            caption="Status changes with reason codes, newest first"
            rows={events}
            rowKey={(e) => `${e.at}-${e.to_status}-${e.reason}`}
            empty={<EmptyState title="No status changes yet" />}
            columns={[
              { key: "at", header: "When", render: (e) => formatDateTime(e.at) },
              {
                key: "change",
                header: "Change",
                render: (e) => (
                  <span className="flex items-center gap-1">
                    {e.from_status && <StatusBadge status={e.from_status} />}
                    <span aria-hidden="true">→</span>
                    <span className="sr-only">to</span>
                    <StatusBadge status={e.to_status} />
                  </span>
                ),
              },
              { key: "reason", header: "Reason code", render: (e) => <code className="text-xs">{e.reason}</code> },
              { key: "message", header: "Message", className: "whitespace-normal min-w-64", render: (e) => e.message || describeReason(e.reason) },
            ]}
          />
        )}
      </QueryView>
    </Card>
  );
}

function Actions({ device }: { device: Device }) {
  const queryClient = useQueryClient();
  const navigate = useNavigate();
  const path = { params: { path: { device_id: device.id } } };
  const refresh = () => {
    void queryClient.invalidateQueries({ queryKey: keys.device(device.id) });
    void queryClient.invalidateQueries({ queryKey: keys.devices });
  };
  const toggle = useMutation({
    mutationFn: () =>
      device.status === "disabled"
        ? unwrap(api.POST("/api/v1/provider/devices/{device_id}/enable", path))
        : unwrap(api.POST("/api/v1/provider/devices/{device_id}/disable", path)),
    onSuccess: refresh,
  });
  const token = useMutation({ mutationFn: () => unwrap(api.POST("/api/v1/provider/devices/{device_id}/join-token", path)) });
  const rotate = useMutation({ mutationFn: () => unwrap(api.POST("/api/v1/provider/devices/{device_id}/credential/rotate", path)), onSuccess: refresh });
  const remove = useMutation({
    mutationFn: () => unwrap(api.DELETE("/api/v1/provider/devices/{device_id}", path)),
    onSuccess: () => {
      void queryClient.invalidateQueries({ queryKey: keys.devices });
      navigate("/provider");
    },
  });
  const issued = rotate.data ?? token.data;
  const error = toggle.error ?? token.error ?? rotate.error ?? remove.error;
  return (
    <Card title="Manage">
      <div className="flex flex-wrap gap-2">
        {device.status === "disabled" ? (
          <Button onClick={() => toggle.mutate()} loading={toggle.isPending}>
            Enable device
          </Button>
        ) : (
          <ConfirmButton
            label="Disable device"
            confirmLabel="Disable"
            question="Take this device out of the pool?"
            onConfirm={() => toggle.mutate()}
            loading={toggle.isPending}
            disabled={device.status === "busy"}
          />
        )}
        {(device.status === "pending" || device.status === "offline") && (
          <Button variant="secondary" onClick={() => token.mutate()} loading={token.isPending}>
            New join command
          </Button>
        )}
        <ConfirmButton
          label="Revoke credential"
          confirmLabel="Revoke now"
          question="The running agent stops at once; you run a new join command on the host."
          onConfirm={() => rotate.mutate()}
          loading={rotate.isPending}
        />
        <ConfirmButton
          label="Remove device"
          confirmLabel="Remove"
          question="Remove this device and its credentials?"
          onConfirm={() => remove.mutate()}
          loading={remove.isPending}
          disabled={device.status === "busy"}
        />
      </div>
      {device.status === "busy" && <p className="mt-2 text-xs text-slate-600">A rented device cannot be disabled or removed until its cluster ends.</p>}
      {issued && (
        <div className="mt-4">
          <JoinCommandPanel joinCommand={issued.join_command} expiresAt={issued.expires_at} />
        </div>
      )}
      {error && (
        <div className="mt-3">
          <ErrorState title="The action failed" error={error} />
        </div>
      )}
    </Card>
  );
}
