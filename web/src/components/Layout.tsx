import { useState } from "react";
import { Link, NavLink, Outlet, useLocation, useNavigate } from "react-router";
import { adminNav } from "@/pages/admin/routes";
import { providerNav } from "@/pages/provider/routes";
import { useAuth, type Role } from "@/stores/auth";

export interface NavItem {
  /** Absolute path, e.g. "/provider/devices". */
  to: string;
  label: string;
  /** Match only this exact path (for an area's index page). */
  end?: boolean;
}

export const customerNav: NavItem[] = [
  { to: "/app", label: "Overview", end: true },
  { to: "/app/deploy", label: "Deploy" },
  { to: "/app/clusters", label: "Clusters" },
  { to: "/app/billing", label: "Billing" },
  { to: "/app/usage", label: "Usage & invoices" },
  { to: "/app/api-keys", label: "API keys" },
  { to: "/app/settings", label: "Limits & alerts" },
];

interface Area {
  prefix: string;
  label: string;
  role: Role;
  items: NavItem[];
}

const areas: Area[] = [
  { prefix: "/app", label: "Customer", role: "customer", items: customerNav },
  { prefix: "/provider", label: "Provider", role: "provider", items: providerNav },
  { prefix: "/admin", label: "Admin", role: "admin", items: adminNav },
];

const topLink = ({ isActive }: { isActive: boolean }) =>
  `rounded-md px-3 py-2 text-sm font-medium ${isActive ? "bg-brand-50 text-brand-700" : "text-slate-700 hover:bg-slate-100"}`;

export function Layout() {
  const { user, roles, logout } = useAuth();
  const location = useLocation();
  const navigate = useNavigate();
  const [menuOpen, setMenuOpen] = useState(false);
  const area = areas.find((a) => location.pathname === a.prefix || location.pathname.startsWith(`${a.prefix}/`));
  const links = [
    { to: "/pool", label: "Pool explorer" },
    ...areas.filter((a) => roles.includes(a.role)).map((a) => ({ to: a.prefix, label: a.label })),
  ];

  const signOut = async () => {
    await logout();
    navigate("/");
  };

  return (
    <div className="flex min-h-screen flex-col">
      <a href="#main" className="sr-only focus:not-sr-only focus:absolute focus:m-2 focus:rounded focus:bg-white focus:p-2">
        Skip to content
      </a>
      <header className="border-b border-slate-200 bg-white">
        <div className="mx-auto flex max-w-7xl items-center justify-between gap-4 px-4 py-3">
          <Link to="/" className="flex items-center gap-2 text-lg font-bold text-slate-900">
            <span aria-hidden="true" className="inline-block size-6 rounded bg-gradient-to-br from-brand-500 to-emerald-500" />
            TES AI
          </Link>
          <nav aria-label="Main" className="hidden items-center gap-1 md:flex">
            {links.map((l) => (
              <NavLink key={l.to} to={l.to} className={topLink}>
                {l.label}
              </NavLink>
            ))}
          </nav>
          <div className="hidden items-center gap-2 md:flex">
            {user ? (
              <>
                <span className="max-w-48 truncate text-sm text-slate-700" title={user.email ?? user.display_name}>
                  {user.email ?? user.display_name}
                </span>
                <button type="button" onClick={() => void signOut()} className={topLink({ isActive: false })}>
                  Sign out
                </button>
              </>
            ) : (
              <>
                <NavLink to="/login" className={topLink}>
                  Sign in
                </NavLink>
                <Link to="/signup" className="rounded-md bg-brand-600 px-3 py-2 text-sm font-medium text-white hover:bg-brand-700">
                  Sign up
                </Link>
              </>
            )}
          </div>
          <button
            type="button"
            className="rounded-md border border-slate-300 px-3 py-2 text-sm font-medium text-slate-800 md:hidden"
            aria-expanded={menuOpen}
            aria-controls="mobile-menu"
            onClick={() => setMenuOpen((o) => !o)}
          >
            Menu
          </button>
        </div>
        {menuOpen && (
          <nav id="mobile-menu" aria-label="Mobile" className="border-t border-slate-200 px-4 py-2 md:hidden" onClick={() => setMenuOpen(false)}>
            <div className="flex flex-col gap-1">
              {links.map((l) => (
                <NavLink key={l.to} to={l.to} className={topLink}>
                  {l.label}
                </NavLink>
              ))}
              {user ? (
                <button type="button" onClick={() => void signOut()} className={`${topLink({ isActive: false })} text-left`}>
                  Sign out ({user.email ?? user.display_name})
                </button>
              ) : (
                <>
                  <NavLink to="/login" className={topLink}>
                    Sign in
                  </NavLink>
                  <NavLink to="/signup" className={topLink}>
                    Sign up
                  </NavLink>
                </>
              )}
            </div>
          </nav>
        )}
        {area && area.items.length > 0 && (
          <nav aria-label={`${area.label} sections`} className="border-t border-slate-100 bg-slate-50">
            <div className="mx-auto flex max-w-7xl gap-1 overflow-x-auto px-4 py-1">
              {area.items.map((item) => (
                <NavLink key={item.to} to={item.to} end={item.end} className={({ isActive }) => `whitespace-nowrap ${topLink({ isActive })}`}>
                  {item.label}
                </NavLink>
              ))}
            </div>
          </nav>
        )}
      </header>
      <main id="main" className="mx-auto w-full max-w-7xl flex-1 px-4 py-6">
        <Outlet />
      </main>
      <footer className="border-t border-slate-200 bg-white">
        <div className="mx-auto flex max-w-7xl flex-wrap justify-between gap-2 px-4 py-4 text-xs text-slate-600">
          <span>TES AI — an open GPU cloud. Prices in USDC.</span>
          <span>
            <a className="underline" href="/api/docs">
              API reference
            </a>
          </span>
        </div>
      </footer>
    </div>
  );
}
