import { useEffect, useRef, useState } from "react";
import { Link, useNavigate } from "react-router";
import { Card } from "@/components/Card";
import { Loading } from "@/components/States";
import { useAuth } from "@/stores/auth";
import { readCallbackFragment } from "./callback";
import { landingFor } from "./common";

/** Where an identity-provider sign-in ends: keep the tokens from the fragment, go on. */
export default function AuthCallback() {
  const navigate = useNavigate();
  const [error, setError] = useState<string | null>(null);
  // Read once: StrictMode runs effects twice, and the fragment is cleared on the first run.
  const result = useRef(readCallbackFragment(window.location.hash));

  useEffect(() => {
    // The tokens must not stay in the address bar or in the history.
    if (window.location.hash) window.history.replaceState(window.history.state, "", window.location.pathname);
    const parsed = result.current;
    if (!parsed) {
      setError("This sign-in link has no tokens (it may have been used already). Sign in again.");
      return;
    }
    let cancelled = false;
    const auth = useAuth.getState();
    auth.setTokens(parsed.tokens);
    auth
      .loadUser()
      .then(() => {
        if (cancelled) return;
        const { user, roles } = useAuth.getState();
        if (!user) setError("The sign-in was not accepted. Sign in again.");
        // "/" means "no particular page": the user's own area.
        else navigate(landingFor(roles, parsed.next === "/" ? null : parsed.next), { replace: true });
      })
      .catch((e: unknown) => !cancelled && setError(e instanceof Error ? e.message : "The sign-in failed."));
    return () => {
      cancelled = true;
    };
  }, [navigate]);

  return (
    <div className="mx-auto max-w-md">
      <h1 className="mb-4 text-2xl font-bold text-slate-900">Signing in</h1>
      <Card>
        {error ? (
          <div className="space-y-3">
            <p role="alert" className="text-sm text-red-800">
              {error}
            </p>
            <Link className="font-medium text-brand-700 underline" to="/login">
              Back to sign in
            </Link>
          </div>
        ) : (
          <Loading label="Finishing the sign-in…" />
        )}
      </Card>
    </div>
  );
}
