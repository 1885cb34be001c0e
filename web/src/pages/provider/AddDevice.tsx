import { useMutation, useQueryClient } from "@tanstack/react-query";
import { useCallback, useState, type FormEvent } from "react";
import { api, unwrap } from "@/api/client";
import { Button, ButtonLink } from "@/components/Button";
import { Card, PageHeader } from "@/components/Card";
import { TextField } from "@/components/Field";
import { parseUsdc } from "@/components/money";
import { ErrorState } from "@/components/States";
import { JoinCommandPanel } from "./JoinCommandPanel";
import { type WaitPhase } from "./lib";
import { keys } from "./queries";
import { WaitingForAgent } from "./WaitingForAgent";

interface Issued {
  deviceId: string;
  name: string;
  joinCommand: string;
  expiresAt: string;
}

export default function AddDevice() {
  const queryClient = useQueryClient();
  const [name, setName] = useState("");
  const [region, setRegion] = useState("");
  const [country, setCountry] = useState("");
  const [price, setPrice] = useState("");
  const [issued, setIssued] = useState<Issued | null>(null);
  const [phase, setPhase] = useState<WaitPhase>("waiting");

  const priceMicro = price.trim() ? parseUsdc(price) : undefined;
  const priceError = priceMicro === null ? "Enter an amount in USDC, e.g. 0.45" : undefined;
  const countryError = country && !/^[A-Za-z]{2}$/.test(country) ? "Two letters (ISO code), e.g. DE" : undefined;

  const create = useMutation({
    mutationFn: () =>
      unwrap(
        api.POST("/api/v1/provider/devices", {
          body: {
            name: name.trim(),
            region: region.trim() || null,
            country: country.trim().toUpperCase() || null,
            price_per_gpu_hour_micro: priceMicro ?? null,
          },
        }),
      ),
    onSuccess: (out) => {
      setIssued({ deviceId: out.device.id, name: out.device.name, joinCommand: out.join_command, expiresAt: out.expires_at });
      void queryClient.invalidateQueries({ queryKey: keys.devices });
    },
  });

  const renew = useMutation({
    mutationFn: (deviceId: string) => unwrap(api.POST("/api/v1/provider/devices/{device_id}/join-token", { params: { path: { device_id: deviceId } } })),
    onSuccess: (out) => setIssued((cur) => (cur ? { ...cur, joinCommand: out.join_command, expiresAt: out.expires_at } : cur)),
  });

  const onPhase = useCallback((p: WaitPhase) => setPhase(p), []);

  const submit = (e: FormEvent) => {
    e.preventDefault();
    if (!name.trim() || priceError || countryError) return;
    create.mutate();
  };

  return (
    <div className="space-y-6">
      <PageHeader
        title="Add a device"
        description="Name the machine, get a one-time join command, and run it on the host. Its agent connects and proves its hardware."
      />
      {!issued ? (
        <Card title="1. Describe the device">
          <form onSubmit={submit} className="grid gap-4 sm:grid-cols-2" aria-label="New device">
            <TextField label="Name" required maxLength={120} value={name} onChange={(e) => setName(e.target.value)} hint="For you only, e.g. rig-01" />
            <TextField
              label="Price per GPU-hour (USDC)"
              inputMode="decimal"
              value={price}
              onChange={(e) => setPrice(e.target.value)}
              error={priceError}
              hint="Leave empty for the platform default. You can change it later."
            />
            <TextField label="Region" maxLength={64} value={region} onChange={(e) => setRegion(e.target.value)} hint="Optional, e.g. eu-central" />
            <TextField label="Country" maxLength={2} value={country} onChange={(e) => setCountry(e.target.value)} error={countryError} hint="Optional, two letters, e.g. DE" />
            <div className="sm:col-span-2">
              <Button type="submit" loading={create.isPending} disabled={!name.trim()}>
                Create device and get join command
              </Button>
            </div>
            {create.error && (
              <div className="sm:col-span-2">
                <ErrorState title="Could not create the device" error={create.error} />
              </div>
            )}
          </form>
        </Card>
      ) : (
        <>
          <Card>
            <JoinCommandPanel
              joinCommand={issued.joinCommand}
              expiresAt={issued.expiresAt}
              expired={phase === "expired"}
              onNewToken={phase === "waiting" || phase === "expired" ? () => renew.mutate(issued.deviceId) : undefined}
              renewing={renew.isPending}
            />
            {renew.error && <ErrorState title="Could not issue a new token" error={renew.error} />}
          </Card>
          <Card>
            <WaitingForAgent key={issued.expiresAt} deviceId={issued.deviceId} expiresAt={issued.expiresAt} onPhase={onPhase} />
          </Card>
          <div className="flex flex-wrap gap-2">
            <ButtonLink variant="secondary" to={`/provider/devices/${issued.deviceId}`}>
              Open {issued.name}
            </ButtonLink>
            <ButtonLink variant="ghost" to="/provider">
              Back to devices
            </ButtonLink>
          </div>
        </>
      )}
    </div>
  );
}
