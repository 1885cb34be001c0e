import { useMutation, useQuery, useQueryClient } from "@tanstack/react-query";
import { useState, type FormEvent } from "react";
import type { Schemas } from "@/api/client";
import { api, unwrap } from "@/api/client";
import { Button } from "@/components/Button";
import { Card, PageHeader, Stat } from "@/components/Card";
import { TextField } from "@/components/Field";
import { formatDateTime } from "@/components/format";
import { formatUsdc, parseUsdc } from "@/components/money";
import { StatusBadge } from "@/components/StatusBadge";
import { EmptyState, ErrorState, Notice, QueryView } from "@/components/States";
import { Table } from "@/components/Table";
import { idempotencyKey } from "./lib";
import { fetchEarnings, fetchPayouts, keys } from "./queries";
import { WalletButton } from "@/wallet/WalletButton";
import { linkPayoutWallet } from "./wallet";

type Payout = Schemas["PayoutOut"];

export default function Payouts() {
  const payouts = useQuery({
    queryKey: keys.payouts,
    queryFn: fetchPayouts,
    // Payouts move pending → sending → sent → paid in the background: poll while any is in flight.
    refetchInterval: (q) => ((q.state.data ?? []).some((p) => !["paid", "reversed", "failed"].includes(p.status)) ? 3000 : 15000),
  });
  const earnings = useQuery({ queryKey: keys.earnings, queryFn: fetchEarnings, refetchInterval: 10000 });
  const lastDestination = payouts.data?.[0]?.destination;
  return (
    <div className="space-y-6">
      <PageHeader title="Payouts" description="Withdraw your earnings in USDC to a Solana wallet you control." />
      <div className="grid gap-6 lg:grid-cols-2">
        <WalletCard lastDestination={lastDestination} />
        <WithdrawCard available={earnings.data?.earnings_micro} loadError={earnings.error} />
      </div>
      <Card title="Withdrawals">
        <QueryView query={payouts} loadingLabel="Loading withdrawals…">
          {(rows) => (
            <Table<Payout>
              caption="Withdrawals, newest first"
              rows={rows}
              rowKey={(p) => p.id}
              empty={<EmptyState title="No withdrawals yet">Link a payout wallet, then withdraw what your devices earned.</EmptyState>}
              columns={[
                { key: "at", header: "Requested", render: (p) => formatDateTime(p.created_at) },
                { key: "amount", header: "Amount", render: (p) => formatUsdc(p.amount_micro) },
                { key: "status", header: "Status", render: (p) => <StatusBadge status={p.status} title={p.reason || undefined} /> },
                { key: "to", header: "To", render: (p) => <code className="text-xs">{shortAddress(p.destination)}</code> },
                {
                  key: "tx",
                  header: "Transaction",
                  render: (p) => (p.signature ? <code className="text-xs" title={p.signature}>{shortAddress(p.signature)}</code> : "—"),
                },
                { key: "reason", header: "Note", className: "whitespace-normal", render: (p) => p.reason || "—" },
              ]}
            />
          )}
        </QueryView>
      </Card>
    </div>
  );
}

function shortAddress(a: string): string {
  return a.length > 16 ? `${a.slice(0, 6)}…${a.slice(-6)}` : a;
}

function WalletCard({ lastDestination }: { lastDestination?: string }) {
  const [linked, setLinked] = useState<{ address: string } | null>(null);
  return (
    <Card title="Payout wallet">
      <div className="space-y-3 text-sm text-slate-700">
        <p>
          Payouts go to a wallet you prove you own: your wallet signs a one-time message (no transaction, no fee). Linking a new wallet
          replaces the old one.
        </p>
        {linked ? (
          <Notice tone="success">
            Payout wallet set: <code className="break-all">{linked.address}</code>
          </Notice>
        ) : lastDestination ? (
          <p>
            Last payout went to <code className="break-all text-xs">{lastDestination}</code>.
          </p>
        ) : null}
        <WalletButton run={async (wallet) => setLinked(await linkPayoutWallet(wallet))}>Link wallet and sign</WalletButton>
      </div>
    </Card>
  );
}

function WithdrawCard({ available, loadError }: { available?: number; loadError: unknown }) {
  const queryClient = useQueryClient();
  const [text, setText] = useState("");
  const [key, setKey] = useState(idempotencyKey);
  const micro = text.trim() ? parseUsdc(text) : null;
  const tooMuch = micro !== null && available !== undefined && micro > available;
  const withdraw = useMutation({
    mutationFn: (amount: number) => unwrap(api.POST("/api/v1/provider/payouts", { body: { amount_micro: amount }, params: { header: { "Idempotency-Key": key } } })),
    onSuccess: () => {
      setText("");
      setKey(idempotencyKey());
      void queryClient.invalidateQueries({ queryKey: keys.payouts });
      void queryClient.invalidateQueries({ queryKey: keys.earnings });
    },
  });
  const submit = (e: FormEvent) => {
    e.preventDefault();
    if (micro && !tooMuch) withdraw.mutate(micro);
  };
  return (
    <Card title="Withdraw">
      <form onSubmit={submit} className="space-y-3" aria-label="Withdraw earnings">
        <Stat label="Available to withdraw" value={available === undefined ? "…" : formatUsdc(available)} />
        {loadError ? <ErrorState title="Could not load your balance" error={loadError} /> : null}
        <TextField
          label="Amount (USDC)"
          inputMode="decimal"
          value={text}
          onChange={(e) => {
            setText(e.target.value);
            withdraw.reset();
          }}
          error={text.trim() && micro === null ? "Enter an amount in USDC, e.g. 25" : tooMuch ? "More than is available" : undefined}
        />
        <div className="flex flex-wrap gap-2">
          <Button type="submit" loading={withdraw.isPending} disabled={!micro || tooMuch}>
            Withdraw
          </Button>
          {available ? (
            <Button variant="ghost" onClick={() => setText(String(available / 1_000_000))}>
              Withdraw all
            </Button>
          ) : null}
        </div>
        {withdraw.isSuccess && <Notice tone="success">Withdrawal requested: it is sent to your payout wallet shortly.</Notice>}
        {withdraw.error && <ErrorState title="Withdrawal not requested" error={withdraw.error} />}
      </form>
    </Card>
  );
}
