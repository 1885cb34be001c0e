import { useQuery } from "@tanstack/react-query";
import { useState } from "react";
import { download } from "@/api/client";
import { Button, ButtonLink } from "@/components/Button";
import { Card, PageHeader, Stat } from "@/components/Card";
import { BarChartView } from "@/components/charts";
import { formatDuration, shortId } from "@/components/format";
import { formatRate, formatUsdc, MICRO_PER_USDC } from "@/components/money";
import { EmptyState, ErrorState, QueryView } from "@/components/States";
import { Table } from "@/components/Table";
import { earningsByDevice, type UsageLine } from "./lib";
import { fetchDevices, fetchEarnings, fetchUsage, keys } from "./queries";

const usd = (micro: number) => formatUsdc(micro);

export default function Earnings() {
  const earnings = useQuery({ queryKey: keys.earnings, queryFn: fetchEarnings, refetchInterval: 10000 });
  const usage = useQuery({ queryKey: keys.usage, queryFn: fetchUsage, refetchInterval: 15000 });
  const devices = useQuery({ queryKey: keys.devices, queryFn: fetchDevices });
  const [csvError, setCsvError] = useState<unknown>(null);

  return (
    <div className="space-y-6" data-testid="earnings-page">
      <PageHeader
        title="Earnings"
        description="What your devices earned from customers' clusters, after the platform fee."
        actions={
          <>
            <Button
              variant="secondary"
              onClick={() => {
                setCsvError(null);
                download("/api/v1/provider/usage?format=csv", "tesai-provider-usage.csv").catch(setCsvError);
              }}
            >
              Download CSV
            </Button>
            <ButtonLink to="/provider/payouts">Withdraw</ButtonLink>
          </>
        }
      />
      {csvError ? <ErrorState title="Download failed" error={csvError} /> : null}
      <QueryView query={earnings} loadingLabel="Loading earnings…">
        {(e) => (
          <>
            <div className="grid grid-cols-1 gap-3 sm:grid-cols-3">
              <Stat label="Available to withdraw" value={formatUsdc(e.earnings_micro)} />
              <Stat label="Pending payout" value={formatUsdc(e.pending_payout_micro)} hint="being sent to your wallet" />
              <Stat label="Paid out" value={formatUsdc(e.paid_out_micro)} hint="all time" />
            </div>
            <Card title="Balance breakdown">
              <BarChartView
                label={`Earnings: ${formatUsdc(e.earnings_micro)} available, ${formatUsdc(e.pending_payout_micro)} pending, ${formatUsdc(e.paid_out_micro)} paid out`}
                xKey="kind"
                data={[
                  { kind: "Available", usdc: e.earnings_micro / MICRO_PER_USDC },
                  { kind: "Pending payout", usdc: e.pending_payout_micro / MICRO_PER_USDC },
                  { kind: "Paid out", usdc: e.paid_out_micro / MICRO_PER_USDC },
                ]}
                series={[{ key: "usdc", label: "USDC" }]}
                valueFormat={(v) => usd(Math.round(v * MICRO_PER_USDC))}
                height={200}
              />
            </Card>
          </>
        )}
      </QueryView>
      <Card title="Earnings by device">
        <QueryView query={usage} loadingLabel="Loading usage…">
          {(lines) =>
            lines.length === 0 ? (
              <EmptyState title="No earnings yet" action={<ButtonLink to="/provider">See your devices</ButtonLink>}>
                Devices earn when customers rent them. Keep your devices online and priced competitively to get booked.
              </EmptyState>
            ) : (
              <ByDevice lines={lines} devices={devices.data ?? []} />
            )
          }
        </QueryView>
      </Card>
    </div>
  );
}

function ByDevice({ lines, devices }: { lines: UsageLine[]; devices: { id: string; name: string }[] }) {
  const rows = earningsByDevice(lines, devices);
  return (
    <div className="space-y-4">
      <BarChartView
        label={`Earnings by device: ${rows.map((r) => `${r.name} ${formatUsdc(r.earned_micro)}`).join(", ")}`}
        xKey="name"
        data={rows.map((r) => ({ name: r.name, earned: r.earned_micro / MICRO_PER_USDC, settled: r.settled_micro / MICRO_PER_USDC }))}
        series={[
          { key: "earned", label: "Earned" },
          { key: "settled", label: "Settled" },
        ]}
        valueFormat={(v) => usd(Math.round(v * MICRO_PER_USDC))}
      />
      <Table
        caption="Earnings per cluster node"
        rows={lines}
        rowKey={(l) => l.node_id}
        columns={[
          { key: "device", header: "Device", render: (l) => devices.find((d) => d.id === l.device_id)?.name ?? shortId(l.device_id) },
          { key: "cluster", header: "Cluster", render: (l) => <code className="text-xs">{shortId(l.cluster_id)}</code> },
          { key: "time", header: "Time rented", render: (l) => formatDuration(l.seconds) },
          { key: "price", header: "Price", render: (l) => formatRate(l.price_per_hour_micro) },
          { key: "amount", header: "Earned", render: (l) => formatUsdc(l.amount_micro) },
          { key: "settled", header: "Settled", render: (l) => formatUsdc(l.settled_micro) },
        ]}
      />
    </div>
  );
}
