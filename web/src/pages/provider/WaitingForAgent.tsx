import { useQuery } from "@tanstack/react-query";
import { useEffect, useState } from "react";
import { Link } from "react-router";
import { Spinner } from "@/components/Button";
import { StatusBadge } from "@/components/StatusBadge";
import { describeReason, hardwareSummary, keepPolling, waitPhase, type Device, type WaitPhase } from "./lib";
import { fetchDevice, keys } from "./queries";

/** Polls the new device until its agent has joined and it is verified (or fails). */
export function WaitingForAgent({
  deviceId,
  expiresAt,
  pollMs = 2000,
  onPhase,
}: {
  deviceId: string;
  expiresAt: string;
  pollMs?: number;
  onPhase?: (phase: WaitPhase) => void;
}) {
  const [now, setNow] = useState(() => Date.now());
  const query = useQuery({
    queryKey: [...keys.device(deviceId), "wait"],
    queryFn: () => fetchDevice(deviceId, 0.25),
    refetchInterval: (q) => {
      const d = q.state.data?.device;
      return keepPolling(waitPhase(d, expiresAt, Date.now())) ? pollMs : false;
    },
  });
  const device = query.data?.device;
  const phase = waitPhase(device, expiresAt, now);

  // The token's expiry changes the phase with no new data: tick while waiting.
  useEffect(() => {
    if (phase !== "waiting") return;
    const timer = setInterval(() => setNow(Date.now()), 1000);
    return () => clearInterval(timer);
  }, [phase]);

  useEffect(() => {
    onPhase?.(phase);
  }, [phase, onPhase]);

  return (
    <WaitingView
      phase={phase}
      device={device}
      reason={query.data?.last_verification?.reason ?? device?.status_reason ?? null}
      error={query.error}
    />
  );
}

/** The waiting panel for one phase (no data fetching: tested on its own). */
export function WaitingView({ phase, device, reason, error }: { phase: WaitPhase; device?: Device; reason?: string | null; error?: unknown }) {
  return (
    <section aria-labelledby="agent-status-heading" data-testid="agent-wait" data-phase={phase} className="space-y-2">
      <h2 id="agent-status-heading" className="text-base font-semibold text-slate-900">
        Agent status
      </h2>
      <div role="status" aria-live="polite" className="rounded-md border border-slate-200 bg-slate-50 p-4 text-sm text-slate-800">
        {phase === "waiting" && (
          <>
            <Spinner label="Waiting for your agent…" />
            <p className="mt-2 text-slate-600">Run the join command on the host. This page updates by itself when the agent connects.</p>
          </>
        )}
        {phase === "expired" && <p>The join token expired before an agent used it. Get a new join token and run the new command.</p>}
        {phase === "verifying" && (
          <>
            <Spinner label="Your agent connected. Proof of compute is running…" />
            <p className="mt-2 text-slate-600">
              The host runs a short benchmark that proves its hardware{device ? ` (${hardwareSummary(device)})` : ""}. This takes about a
              minute.
            </p>
          </>
        )}
        {phase === "online" && (
          <p className="font-medium text-green-800">
            Your device is online and listed in the pool.{" "}
            {device && (
              <Link className="text-brand-700 underline" to={`/provider/devices/${device.id}`}>
                Open {device.name}
              </Link>
            )}
          </p>
        )}
        {phase === "rejected" && (
          <p className="text-red-800">
            Proof of compute failed: {describeReason(reason)} Fix the host, then run verification again from the device page.
          </p>
        )}
        {phase === "offline" && <p>The agent connected before but is not sending heartbeats. Check that it is still running on the host.</p>}
        {phase === "disabled" && <p>The device is disabled. Enable it from the device page to list it.</p>}
        {device && (
          <p className="mt-2 flex items-center gap-2 text-xs text-slate-600">
            Device status: <StatusBadge status={device.status} />
          </p>
        )}
      </div>
      {error ? (
        <p role="alert" className="text-sm text-red-700">
          Could not check the device: {error instanceof Error ? error.message : String(error)}. Retrying…
        </p>
      ) : null}
    </section>
  );
}
