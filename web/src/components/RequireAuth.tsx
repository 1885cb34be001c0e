import type { ReactNode } from "react";
import { Navigate, useLocation } from "react-router";
import { Loading } from "@/components/States";
import { useAuth, type Role } from "@/stores/auth";

/** Renders children for a signed-in user with `role`; else sends them to sign in. */
export function RequireAuth({ role, children }: { role?: Role; children: ReactNode }) {
  const { user, ready, roles } = useAuth();
  const location = useLocation();
  if (!ready) return <Loading label="Checking your session…" />;
  if (!user) return <Navigate to={`/login?next=${encodeURIComponent(location.pathname + location.search)}`} replace />;
  if (role && !roles.includes(role)) {
    return (
      <div role="alert" className="rounded-lg border border-amber-200 bg-amber-50 p-4 text-sm text-amber-900">
        This area is for accounts with the <strong>{role}</strong> role. Your account has: {roles.join(", ") || "no roles"}.
      </div>
    );
  }
  return <>{children}</>;
}
