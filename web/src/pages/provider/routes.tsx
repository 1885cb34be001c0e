import type { RouteObject } from "react-router";
import type { NavItem } from "@/components/Layout";

/** A lazy page: each is its own chunk, loaded on first visit (do not import "@/router": cycle). */
function page(load: () => Promise<{ default: React.ComponentType }>): Pick<RouteObject, "lazy"> {
  return { lazy: async () => ({ Component: (await load()).default }) };
}

/** Provider area routes, relative to /provider. */
export const providerRoutes: RouteObject[] = [
  { index: true, ...page(() => import("./Devices")) },
  { path: "devices", ...page(() => import("./Devices")) },
  { path: "devices/new", ...page(() => import("./AddDevice")) },
  { path: "devices/:deviceId", ...page(() => import("./DeviceDetail")) },
  { path: "earnings", ...page(() => import("./Earnings")) },
  { path: "payouts", ...page(() => import("./Payouts")) },
];

/** Provider area section links (absolute paths), shown under the header. */
export const providerNav: NavItem[] = [
  { to: "/provider", label: "Devices", end: true },
  { to: "/provider/devices/new", label: "Add device" },
  { to: "/provider/earnings", label: "Earnings" },
  { to: "/provider/payouts", label: "Payouts" },
];
