/** Server state of the provider area (TanStack Query keys and fetchers). */
import { api, unwrap } from "@/api/client";

export const keys = {
  devices: ["provider", "devices"] as const,
  device: (id: string) => ["provider", "device", id] as const,
  events: (id: string) => ["provider", "device", id, "events"] as const,
  earnings: ["provider", "earnings"] as const,
  usage: ["provider", "usage"] as const,
  payouts: ["provider", "payouts"] as const,
};

export const fetchDevices = () => unwrap(api.GET("/api/v1/provider/devices"));

export const fetchDevice = (deviceId: string, hours = 24) =>
  unwrap(api.GET("/api/v1/provider/devices/{device_id}", { params: { path: { device_id: deviceId }, query: { hours } } }));

export const fetchEvents = (deviceId: string) =>
  unwrap(api.GET("/api/v1/provider/devices/{device_id}/events", { params: { path: { device_id: deviceId }, query: { limit: 100 } } }));

export const fetchEarnings = () => unwrap(api.GET("/api/v1/provider/earnings"));

/** Usage lines (JSON): what each device earned per cluster node. */
export const fetchUsage = () =>
  unwrap(api.GET("/api/v1/provider/usage", { params: { query: { format: "json" } } })) as Promise<import("./lib").UsageLine[]>;

export const fetchPayouts = () => unwrap(api.GET("/api/v1/provider/payouts"));
