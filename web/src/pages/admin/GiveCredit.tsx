import { useMutation, useQueryClient } from "@tanstack/react-query";
import { useState, type FormEvent } from "react";
import { api, unwrap, type Schemas } from "@/api/client";
import { Button } from "@/components/Button";
import { TextField } from "@/components/Field";
import { formatUsdc } from "@/components/money";
import { ErrorState, Notice } from "@/components/States";
import { idempotencyKey } from "@/pages/provider/lib";
import { creditGrant } from "./lib";

type User = Schemas["UserOut"];

/**
 * "Give credit" for one user: amount and reason, sent to POST /internal/credits.
 *
 * The idempotency key is made when the form opens and kept until a grant succeeds, so
 * pressing the button again after an error or a lost answer never gives the credit twice.
 */
export function GiveCredit({ user }: { user: User }) {
  const queryClient = useQueryClient();
  const who = user.email ?? user.display_name;
  const [open, setOpen] = useState(false);
  const [amount, setAmount] = useState("");
  const [reason, setReason] = useState("");
  const [key, setKey] = useState(idempotencyKey);
  const [tried, setTried] = useState(false);
  const { micro, errors } = creditGrant(amount, reason);
  const grant = useMutation({
    mutationFn: (body: Schemas["GrantIn"]) =>
      unwrap(api.POST("/api/v1/internal/credits", { body, params: { header: { "Idempotency-Key": key } } })),
    onSuccess: () => {
      setKey(idempotencyKey());
      setAmount("");
      setReason("");
      setTried(false);
      setOpen(false);
      void queryClient.invalidateQueries({ queryKey: ["admin", "audit"] });
    },
  });
  const submit = (e: FormEvent) => {
    e.preventDefault();
    setTried(true);
    if (micro !== null && !errors.reason) grant.mutate({ user_id: user.id, amount_micro: micro, reason: reason.trim() });
  };
  const done = grant.data;
  if (!open) {
    return (
      <div className="space-y-2">
        <Button variant="secondary" className="px-2 py-1" onClick={() => setOpen(true)} aria-label={`Give credit to ${who}`}>
          Give credit
        </Button>
        {done && (
          <Notice tone="success">
            Credited {formatUsdc(done.amount_micro, { unit: true })} to {who} (ledger transaction {done.transaction_id}).
          </Notice>
        )}
      </div>
    );
  }
  return (
    <form onSubmit={submit} className="min-w-56 space-y-2" aria-label={`Give credit to ${who}`}>
      <TextField
        label="Amount (USDC)"
        inputMode="decimal"
        value={amount}
        onChange={(e) => setAmount(e.target.value)}
        error={tried || amount ? errors.amount : undefined}
      />
      <TextField label="Reason" value={reason} onChange={(e) => setReason(e.target.value)} error={tried ? errors.reason : undefined} maxLength={300} />
      <div className="flex flex-wrap gap-2">
        <Button type="submit" className="px-2 py-1" loading={grant.isPending}>
          {grant.error ? "Try again" : "Give credit"}
        </Button>
        <Button variant="ghost" className="px-2 py-1" onClick={() => setOpen(false)} disabled={grant.isPending}>
          Cancel
        </Button>
      </div>
      {grant.error && (
        <>
          <ErrorState title="Credit not confirmed" error={grant.error} />
          <p className="text-xs text-slate-600">Trying again is safe: the credit is given at most once.</p>
        </>
      )}
    </form>
  );
}
