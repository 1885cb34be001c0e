import { useMutation, useQuery, useQueryClient } from "@tanstack/react-query";
import { useEffect, useState } from "react";
import { api, download, unwrap, type Schemas } from "@/api/client";
import { Button } from "@/components/Button";
import { Card, PageHeader, Stat } from "@/components/Card";
import { CopyBlock, TextField } from "@/components/Field";
import { formatDateTime } from "@/components/format";
import { plural } from "@/components/hardware";
import { formatUsdc, parseUsdc } from "@/components/money";
import { EmptyState, ErrorState, Notice, QueryView } from "@/components/States";
import { StatusBadge } from "@/components/StatusBadge";
import { Table } from "@/components/Table";
import { WalletButton } from "@/wallet/WalletButton";
import type { ConsoleWallet } from "@/wallet/wallets";

type Deposit = Schemas["DepositOut"];

export default function Billing() {
  const balance = useQuery({ queryKey: ["balance"], queryFn: () => unwrap(api.GET("/api/v1/customer/balance")), refetchInterval: 5000 });
  const ledger = useQuery({ queryKey: ["ledger"], queryFn: () => unwrap(api.GET("/api/v1/customer/ledger", { params: { query: { limit: 100 } } })), refetchInterval: 10000 });
  return (
    <div className="space-y-6">
      <PageHeader title="Billing" description="Your USDC balance, deposits and every movement of money." />
      <QueryView query={balance}>
        {(b) => (
          <div className="grid grid-cols-2 gap-4">
            <Stat label="Available" value={formatUsdc(b.available_micro)} hint="What new clusters can use" />
            <Stat label="Held" value={formatUsdc(b.held_micro)} hint={`for ${plural(Object.keys(b.holds).length, "cluster")}`} />
          </div>
        )}
      </QueryView>
      <DepositCard />
      <Card title="Ledger" actions={<Button variant="secondary" onClick={() => void download("/api/v1/customer/ledger?format=csv&limit=1000", "ledger.csv")}>Download CSV</Button>}>
        <QueryView query={ledger}>
          {(rows) => (
            <Table
              caption="Ledger"
              rows={rows}
              rowKey={(l) => l.posting_id}
              empty={<EmptyState title="No money has moved yet">Deposit USDC above; credits and cluster charges will appear here.</EmptyState>}
              columns={[
                { key: "at", header: "When", render: (l) => formatDateTime(l.at) },
                { key: "kind", header: "Kind", render: (l) => l.kind.replace(/_/g, " ") },
                { key: "acct", header: "Account", render: (l) => l.account.replace(/_/g, " ") },
                { key: "amt", header: "Amount", className: "text-right", render: (l) => <span className={l.amount_micro < 0 ? "text-red-800" : "text-green-800"}>{formatUsdc(l.amount_micro, { sign: true })}</span> },
                { key: "memo", header: "Memo", render: (l) => l.memo || "—" },
              ]}
            />
          )}
        </QueryView>
      </Card>
    </div>
  );
}

function DepositCard() {
  const qc = useQueryClient();
  const [amount, setAmount] = useState("25");
  const [deposit, setDeposit] = useState<Deposit | null>(null);
  const micro = parseUsdc(amount);
  const create = useMutation({
    mutationFn: () => {
      if (!micro) throw new Error("Enter an amount of USDC, e.g. 25 or 12.50.");
      return unwrap(api.POST("/api/v1/customer/deposits", { body: { amount_micro: micro }, params: { header: { "Idempotency-Key": crypto.randomUUID() } } }));
    },
    onSuccess: setDeposit,
  });
  const status = useQuery({
    queryKey: ["deposit", deposit?.id],
    queryFn: () => unwrap(api.GET("/api/v1/customer/deposits/{deposit_id}", { params: { path: { deposit_id: deposit!.id } } })),
    enabled: !!deposit,
    refetchInterval: (q) => (q.state.data?.status === "open" || !q.state.data ? 3000 : false),
  });
  const current = status.data ?? deposit;
  useEffect(() => {
    if (current && current.status === "paid") void qc.invalidateQueries({ queryKey: ["balance"] });
  }, [current, qc]);

  return (
    <Card title="Deposit USDC">
      <div className="grid gap-6 md:grid-cols-2">
        <form
          className="space-y-3"
          onSubmit={(e) => {
            e.preventDefault();
            create.mutate();
          }}
        >
          <TextField label="Amount (USDC)" inputMode="decimal" value={amount} onChange={(e) => setAmount(e.target.value)} error={amount && !micro ? "Not an amount" : undefined} />
          <Button type="submit" loading={create.isPending}>
            Create a Solana Pay request
          </Button>
          {create.error && <ErrorState error={create.error} />}
          <p className="text-xs text-slate-600">Pay with any Solana wallet: scan the QR code, or open the request in a wallet on this device. The balance is credited once the transfer is final.</p>
        </form>
        {current ? <DepositRequest deposit={current} /> : <EmptyState title="No open deposit">Create a request to get a QR code.</EmptyState>}
      </div>
    </Card>
  );
}

function DepositRequest({ deposit }: { deposit: Deposit }) {
  const [qr, setQr] = useState<string | null>(null);
  useEffect(() => {
    let live = true;
    void import("qrcode").then((QR) => QR.toDataURL(deposit.qr, { margin: 1, width: 220 })).then((url) => live && setQr(url));
    return () => {
      live = false;
    };
  }, [deposit.qr]);
  return (
    <div className="space-y-3" data-testid="deposit-request">
      <div className="flex items-center gap-2 text-sm">
        <StatusBadge status={deposit.status} /> {formatUsdc(deposit.amount_micro, { unit: true })} · expires {formatDateTime(deposit.expires_at)}
      </div>
      {deposit.status === "open" ? (
        <>
          {qr ? <img src={qr} width={220} height={220} alt={`Solana Pay QR code for ${formatUsdc(deposit.amount_micro)} USDC`} className="rounded border border-slate-200" /> : <div className="size-[220px] animate-pulse bg-slate-100" />}
          <div className="flex flex-wrap items-start gap-3">
            <PayWithWallet deposit={deposit} />
            <a href={deposit.url} className="inline-flex items-center rounded-md border border-slate-300 bg-white px-4 py-2 text-sm font-medium text-slate-800 hover:bg-slate-100">
              Open in wallet
            </a>
          </div>
          <CopyBlock label="Solana Pay URL" text={deposit.url} />
        </>
      ) : deposit.status === "paid" ? (
        <Notice tone="success">Credited {formatUsdc(deposit.credited_micro)}.</Notice>
      ) : (
        <Notice tone="warning">This request expired unpaid. Create a new one.</Notice>
      )}
    </div>
  );
}

/** Pay the deposit from a browser wallet: a USDC transfer carrying the deposit's reference. */
function PayWithWallet({ deposit }: { deposit: Deposit }) {
  const config = useQuery({ queryKey: ["console-config"], queryFn: () => unwrap(api.GET("/api/v1/public/console")), staleTime: Infinity });
  const [signature, setSignature] = useState<string | null>(null);
  const pay = async (wallet: ConsoleWallet) => {
    const c = config.data ?? (await config.refetch({ throwOnError: true })).data!;
    const { payDeposit } = await import("@/wallet/wallets");
    setSignature(await payDeposit(wallet, { rpcUrl: c.solana_rpc_url, decimals: c.usdc_decimals, deposit }));
  };
  if (config.data && !config.data.solana_rpc_url) {
    return <p className="text-sm text-slate-600">Paying from a browser wallet is off on this server: scan the QR code or open the request in your wallet.</p>;
  }
  return (
    <div className="space-y-2">
      <WalletButton run={pay}>Pay with wallet</WalletButton>
      {signature && (
        <div role="status" className="space-y-1 text-sm text-slate-700">
          <p>Sent. Waiting for the transfer to be final; the balance updates on its own.</p>
          <CopyBlock label="Transaction signature" text={signature} />
        </div>
      )}
    </div>
  );
}
