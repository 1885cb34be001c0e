/** Pure helpers of the provider area: device states, reason codes, telemetry and earnings shaping. */
import type { Schemas } from "@/api/client";

export type Device = Schemas["DeviceOut"];
export type TelemetryPoint = Schemas["TelemetryPoint"];
export type UsageLine = Schemas["UsageLineOut"];

/** What each device status means for its provider, and what to do next. */
export const STATUS_HELP: Record<string, string> = {
  pending: "Waiting for the agent to join. Run the join command on the host.",
  verifying: "The agent joined; proof of compute is running.",
  online: "Verified and heartbeating: listed in the pool.",
  busy: "Rented: part of a customer's cluster.",
  offline: "No heartbeats. Check that the agent is running on the host.",
  disabled: "Taken out of the pool. Enable it to list it again.",
  rejected: "Failed proof of compute. See the reason, fix the host and run verification again.",
  draining: "An operator is draining it: current nodes finish, no new ones are placed.",
  drained: "Drained: no cluster node is on it and none is placed until it is put back.",
};

/** Reason codes of device events (mirror of tesai.devices.states.REASONS). */
export const REASONS: Record<string, string> = {
  created: "The device was created; waiting for its agent to join.",
  agent_joined: "The agent joined; proof of compute is running.",
  verification_passed: "Proof of compute passed; the device is listed.",
  verification_requested: "Proof of compute was requested again.",
  proof_digest_mismatch: "The proof-of-compute digest did not match the challenge.",
  proof_sample_mismatch: "Sampled entries of the proof result were wrong.",
  gpu_model_mismatch: "The measured hardware does not match the declared GPU model.",
  gpu_model_unknown: "The declared GPU model is not in the reference table.",
  cpu_mismatch: "The measured CPU does not match the declared hardware.",
  timing_implausible: "The benchmark timings are impossible for this hardware.",
  vram_alloc_failed: "The declared GPU memory could not be allocated.",
  verification_timeout: "No proof-of-compute result arrived in time.",
  proof_failures_review: "Proofs of compute failed repeatedly; an admin must review the device before it can be enabled.",
  offences_review:
    "Checks of the device failed repeatedly (proofs of compute, canary tasks, nodes the control plane did not find); an admin must review it before it can be enabled.",
  node_unverified: "A Ray node the agent reported running was not in its head's Ray state as the control plane read it.",
  node_resource_shared: "One Ray node claimed the node resources of several cluster nodes: none of them counts as alive.",
  node_address_mismatch: "The Ray node claiming this device's cluster node runs at an address the device's agent does not connect from.",
  head_address_refused: "The control plane does not connect to the address this device's head would be reached at.",
  canary_failed: "A canary task did not return the value only a run on this device's node can produce.",
  missed_heartbeats: "No heartbeats arrived within the grace period.",
  heartbeat_resumed: "Heartbeats arrived again.",
  agent_left: "The agent shut down cleanly.",
  disabled_by_provider: "The provider disabled the device.",
  disabled_by_admin: "An admin disabled the device.",
  enabled_by_provider: "The provider enabled the device again.",
  rented: "The device was placed in a customer's cluster.",
  released: "The device was released from a cluster.",
  credential_revoked: "The device credential was revoked; the agent must join again.",
  drain_requested: "An operator is draining the device: its nodes finish, no new ones come.",
  drained: "The device is drained: no cluster node is left on it.",
  undrained: "An operator put the device back in the pool.",
};

/** A readable sentence for a reason code (the code itself when unknown). */
export function describeReason(code: string | null | undefined): string {
  if (!code) return "—";
  return REASONS[code] ?? code.replace(/_/g, " ");
}

/** Live states: polled faster, shown as "connected". */
export const CONNECTED = new Set(["verifying", "online", "busy", "draining"]);

/** The add-device flow after the token is issued: what the page tells the provider. */
export type WaitPhase =
  | "waiting" // no agent yet, token still valid
  | "expired" // no agent and the join token has expired: issue a new one
  | "verifying" // the agent joined, proof of compute running
  | "online" // done: listed in the pool
  | "rejected" // proof of compute failed
  | "offline" // the agent joined earlier but stopped heartbeating
  | "disabled";

export function waitPhase(device: Pick<Device, "status" | "last_seen_at"> | undefined, expiresAt: string, now: number): WaitPhase {
  const status = device?.status ?? "pending";
  switch (status) {
    case "verifying":
      return "verifying";
    case "online":
    case "busy":
      return "online";
    case "rejected":
      return "rejected";
    case "disabled":
      return "disabled";
    case "offline":
    case "drained":
    case "draining":
      return device?.last_seen_at ? "offline" : expiredOr("waiting", expiresAt, now);
    default:
      return expiredOr("waiting", expiresAt, now);
  }
}

function expiredOr(phase: WaitPhase, expiresAt: string, now: number): WaitPhase {
  const t = Date.parse(expiresAt);
  return Number.isFinite(t) && t <= now ? "expired" : phase;
}

/** Whether the waiting view should keep polling in this phase. */
export function keepPolling(phase: WaitPhase): boolean {
  return phase === "waiting" || phase === "verifying" || phase === "offline";
}

/** "2.5 GB", "512 MB" for a byte count. */
export function formatBytes(bytes: number | null | undefined): string {
  if (bytes === null || bytes === undefined || !Number.isFinite(bytes)) return "—";
  const units = ["B", "KB", "MB", "GB", "TB"];
  let v = bytes;
  let i = 0;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i += 1;
  }
  return `${v >= 10 || i === 0 ? Math.round(v) : v.toFixed(1)} ${units[i]}`;
}

/** "2× RTX 4090 · 24 GB" or "CPU · 16 cores". */
export function hardwareSummary(d: Pick<Device, "gpu_model" | "gpu_count" | "vram_bytes_per_gpu" | "cpu_cores">): string {
  if (d.gpu_count > 0) {
    const vram = d.vram_bytes_per_gpu ? ` · ${formatBytes(d.vram_bytes_per_gpu)}` : "";
    return `${d.gpu_count}× ${d.gpu_model ?? "GPU"}${vram}`;
  }
  return d.cpu_cores ? `CPU · ${d.cpu_cores} cores` : "Not reported yet";
}

/** Telemetry history as chart rows (epoch ms under `t`; memory in GiB). */
export function telemetryRows(points: TelemetryPoint[]): Record<string, number | null>[] {
  return [...points]
    .sort((a, b) => Date.parse(a.minute) - Date.parse(b.minute))
    .map((p) => ({
      t: Date.parse(p.minute),
      gpu_util: p.gpu_utilization_pct ?? null,
      gpu_mem_gib: p.gpu_memory_used_bytes === null || p.gpu_memory_used_bytes === undefined ? null : round(p.gpu_memory_used_bytes / 2 ** 30, 2),
      temp: p.gpu_temperature_c ?? null,
      power: p.gpu_power_w ?? null,
      cpu: p.cpu_percent,
      mem_gib: round(p.mem_used_bytes / 2 ** 30, 2),
    }));
}

function round(v: number, digits: number): number {
  const f = 10 ** digits;
  return Math.round(v * f) / f;
}

export interface DeviceEarning {
  device_id: string;
  name: string;
  earned_micro: number;
  settled_micro: number;
  hours: number;
  nodes: number;
}

/** Earnings per device from the usage lines (largest first); names from the device list. */
export function earningsByDevice(lines: UsageLine[], devices: Pick<Device, "id" | "name">[]): DeviceEarning[] {
  const names = new Map(devices.map((d) => [d.id, d.name]));
  const by = new Map<string, DeviceEarning>();
  for (const l of lines) {
    const row = by.get(l.device_id) ?? {
      device_id: l.device_id,
      name: names.get(l.device_id) ?? l.device_id.slice(0, 8),
      earned_micro: 0,
      settled_micro: 0,
      hours: 0,
      nodes: 0,
    };
    row.earned_micro += l.amount_micro;
    row.settled_micro += l.settled_micro;
    row.hours += l.seconds / 3600;
    row.nodes += 1;
    by.set(l.device_id, row);
  }
  return [...by.values()].sort((a, b) => b.earned_micro - a.earned_micro);
}

/** A fresh idempotency key for a money-moving POST. */
export function idempotencyKey(): string {
  return globalThis.crypto?.randomUUID?.() ?? `${Date.now()}-${Math.random().toString(16).slice(2)}`;
}
