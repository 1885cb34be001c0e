/** Reading the tokens the API's OIDC callback puts in the URL fragment of /auth/callback. */
import type { Tokens } from "@/stores/auth";

export interface CallbackResult {
  tokens: Tokens;
  /** The console path the sign-in was started from (already checked by the API). */
  next: string | null;
}

/**
 * `#access_token=…&refresh_token=…&expires_in=…&next=/app` → tokens and where to go;
 * null when either token is missing (an old bookmark, a reload after the fragment was cleared).
 */
export function readCallbackFragment(hash: string): CallbackResult | null {
  const params = new URLSearchParams(hash.replace(/^#/, ""));
  const access = params.get("access_token");
  const refresh = params.get("refresh_token");
  if (!access || !refresh) return null;
  const expires = Number(params.get("expires_in"));
  const next = params.get("next");
  return {
    tokens: { access_token: access, refresh_token: refresh, expires_in: Number.isFinite(expires) ? expires : 0, token_type: "bearer" },
    next: next && next.startsWith("/") && !next.startsWith("//") && !next.includes("\\") ? next : null,
  };
}

/** Where "Continue with <provider>" starts: the API redirects back to /auth/callback. */
export function oidcLoginHref(provider: string, next: string | null): string {
  const returnTo = next && next.startsWith("/") && !next.startsWith("//") ? next : "/";
  return `/api/v1/auth/oidc/${encodeURIComponent(provider)}/login?return_to=${encodeURIComponent(returnTo)}`;
}
