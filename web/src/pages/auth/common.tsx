import { useQuery } from "@tanstack/react-query";
import { useNavigate, useSearchParams } from "react-router";
import { api, unwrap } from "@/api/client";
import { useAuth, type Role } from "@/stores/auth";
import { WalletButton } from "@/wallet/WalletButton";
import { oidcLoginHref } from "./callback";

/** Where to go after signing in: `?next=` if it is ours, else the user's main area. */
export function landingFor(roles: Role[], next: string | null): string {
  if (next && next.startsWith("/") && !next.startsWith("//")) return next;
  if (roles.includes("customer")) return "/app";
  if (roles.includes("provider")) return "/provider";
  if (roles.includes("admin")) return "/admin";
  return "/";
}

export function useAfterLogin(): () => void {
  const navigate = useNavigate();
  const [params] = useSearchParams();
  return () => navigate(landingFor(useAuth.getState().roles, params.get("next")), { replace: true });
}

export function OtherSignIn() {
  const walletLogin = useAuth((s) => s.walletLogin);
  const after = useAfterLogin();
  const config = useQuery({ queryKey: ["console-config"], queryFn: () => unwrap(api.GET("/api/v1/public/console")), staleTime: Infinity });
  const [params] = useSearchParams();

  return (
    <div className="space-y-3">
      <div className="flex items-center gap-3 text-xs text-slate-600">
        <span className="h-px flex-1 bg-slate-200" /> or <span className="h-px flex-1 bg-slate-200" />
      </div>
      <WalletButton variant="secondary" className="w-full" run={async (wallet) => {
        await walletLogin(wallet);
        after();
      }}>
        Sign in with a Solana wallet
      </WalletButton>
      {(config.data?.oidc_providers ?? []).map((p) => (
        <a key={p} href={oidcLoginHref(p, params.get("next"))} className="flex w-full justify-center rounded-md border border-slate-300 bg-white px-4 py-2 text-sm font-medium text-slate-800 hover:bg-slate-100">
          Continue with {p.charAt(0).toUpperCase() + p.slice(1)}
        </a>
      ))}
    </div>
  );
}
