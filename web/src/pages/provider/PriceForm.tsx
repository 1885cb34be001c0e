import { useMutation, useQueryClient } from "@tanstack/react-query";
import { useState, type FormEvent } from "react";
import { api, unwrap } from "@/api/client";
import { Button } from "@/components/Button";
import { TextField } from "@/components/Field";
import { formatRate, formatUsdc, parseUsdc } from "@/components/money";
import { ErrorState, Notice } from "@/components/States";
import type { Device } from "./lib";
import { keys } from "./queries";

/** Set the price per GPU-hour (per device-hour on CPU-only devices). */
export function PriceForm({ device }: { device: Device }) {
  const queryClient = useQueryClient();
  const [text, setText] = useState(() => formatUsdc(device.price_per_gpu_hour_micro).replace(/^\$/, "").replace(/,/g, ""));
  const micro = parseUsdc(text);
  const unit = device.gpu_count > 0 ? "GPU-hour" : "device-hour";
  const save = useMutation({
    mutationFn: (price: number) =>
      unwrap(api.PUT("/api/v1/provider/devices/{device_id}/price", { params: { path: { device_id: device.id } }, body: { price_per_gpu_hour_micro: price } })),
    onSuccess: () => {
      void queryClient.invalidateQueries({ queryKey: keys.device(device.id) });
      void queryClient.invalidateQueries({ queryKey: keys.devices });
    },
  });
  const submit = (e: FormEvent) => {
    e.preventDefault();
    if (micro !== null) save.mutate(micro);
  };
  return (
    <form onSubmit={submit} className="space-y-3" aria-label="Price">
      <p className="text-sm text-slate-700">
        Current price: <strong>{formatRate(device.price_per_gpu_hour_micro, device.gpu_count > 0 ? "GPU·h" : "node·h")}</strong>
        {device.gpu_count > 1 && <> ({formatRate(device.price_per_gpu_hour_micro * device.gpu_count)} for the whole device)</>}
      </p>
      <TextField
        label={`New price per ${unit} (USDC)`}
        inputMode="decimal"
        value={text}
        onChange={(e) => {
          setText(e.target.value);
          save.reset();
        }}
        error={micro === null ? "Enter an amount in USDC, e.g. 0.45" : undefined}
        hint="Applies to new bookings. The platform sets a minimum and a maximum."
      />
      <Button type="submit" loading={save.isPending} disabled={micro === null || micro === device.price_per_gpu_hour_micro}>
        Save price
      </Button>
      {save.isSuccess && <Notice tone="success">Price saved.</Notice>}
      {save.error && <ErrorState title="Price not saved" error={save.error} />}
    </form>
  );
}
