import type { RouteObject } from "react-router";
import type { NavItem } from "@/components/Layout";

/** A lazy page: each is its own chunk, loaded on first visit (do not import "@/router": cycle). */
function page(load: () => Promise<{ default: React.ComponentType }>): Pick<RouteObject, "lazy"> {
  return { lazy: async () => ({ Component: (await load()).default }) };
}

/** Admin area routes, relative to /admin. */
export const adminRoutes: RouteObject[] = [
  { index: true, ...page(() => import("./Users")) },
  { path: "users", ...page(() => import("./Users")) },
  { path: "devices", ...page(() => import("./Devices")) },
  { path: "clusters", ...page(() => import("./Clusters")) },
  { path: "analytics", ...page(() => import("./Analytics")) },
  { path: "audit", ...page(() => import("./Audit")) },
];

/** Admin area section links (absolute paths), shown under the header. */
export const adminNav: NavItem[] = [
  { to: "/admin", label: "Users", end: true },
  { to: "/admin/devices", label: "Devices" },
  { to: "/admin/clusters", label: "Clusters" },
  { to: "/admin/analytics", label: "Analytics" },
  { to: "/admin/audit", label: "Audit log" },
];
