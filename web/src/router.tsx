import { createBrowserRouter, Outlet, type RouteObject } from "react-router";
import { Layout } from "@/components/Layout";
import { RequireAuth } from "@/components/RequireAuth";
import { ErrorState } from "@/components/States";
import { adminRoutes } from "@/pages/admin/routes";
import { providerRoutes } from "@/pages/provider/routes";
import { NotFound } from "@/pages/public/NotFound";
import type { Role } from "@/stores/auth";

/** A lazy route: each page is its own chunk, loaded when first visited. */
export function page(load: () => Promise<{ default: React.ComponentType }>): Pick<RouteObject, "lazy"> {
  return { lazy: async () => ({ Component: (await load()).default }) };
}

function RequireArea({ role }: { role: Role }) {
  return (
    <RequireAuth role={role}>
      <Outlet />
    </RequireAuth>
  );
}

function RouteError() {
  return (
    <div className="mx-auto max-w-xl p-6">
      <ErrorState
        error={new Error("This page failed to load. Reload the page; if it keeps failing, the console may have been updated.")}
        retry={() => window.location.reload()}
      />
    </div>
  );
}

const customerRoutes: RouteObject[] = [
  { index: true, ...page(() => import("@/pages/customer/Overview")) },
  { path: "deploy", ...page(() => import("@/pages/customer/Deploy")) },
  { path: "clusters", ...page(() => import("@/pages/customer/Clusters")) },
  { path: "clusters/:clusterId", ...page(() => import("@/pages/customer/ClusterDetail")) },
  { path: "billing", ...page(() => import("@/pages/customer/Billing")) },
  { path: "usage", ...page(() => import("@/pages/customer/Usage")) },
  { path: "api-keys", ...page(() => import("@/pages/customer/ApiKeys")) },
  { path: "settings", ...page(() => import("@/pages/customer/Settings")) },
];

export const routes: RouteObject[] = [
  {
    path: "/",
    element: <Layout />,
    errorElement: <RouteError />,
    children: [
      { index: true, ...page(() => import("@/pages/public/Landing")) },
      { path: "pool", ...page(() => import("@/pages/public/PoolExplorer")) },
      { path: "devices/:deviceId", ...page(() => import("@/pages/public/DevicePage")) },
      { path: "login", ...page(() => import("@/pages/auth/Login")) },
      { path: "signup", ...page(() => import("@/pages/auth/Signup")) },
      { path: "auth/callback", ...page(() => import("@/pages/auth/AuthCallback")) },
      { path: "app", element: <RequireArea role="customer" />, children: customerRoutes },
      { path: "provider", element: <RequireArea role="provider" />, children: providerRoutes },
      { path: "admin", element: <RequireArea role="admin" />, children: adminRoutes },
      { path: "*", element: <NotFound /> },
    ],
  },
];

export const createRouter = () => createBrowserRouter(routes);
