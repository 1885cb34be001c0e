import { useState } from "react";
import { Link, useSearchParams } from "react-router";
import { Button } from "@/components/Button";
import { Card } from "@/components/Card";
import { TextField } from "@/components/Field";
import { useAuth, type Role } from "@/stores/auth";
import { OtherSignIn, useAfterLogin } from "./common";

export default function Signup() {
  const signup = useAuth((s) => s.signup);
  const after = useAfterLogin();
  const [params] = useSearchParams();
  const [email, setEmail] = useState("");
  const [password, setPassword] = useState("");
  const [roles, setRoles] = useState<Role[]>(params.get("role") === "provider" ? ["provider"] : ["customer"]);
  const [error, setError] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);

  const toggle = (role: Role, on: boolean) => setRoles((r) => (on ? [...new Set([...r, role])] : r.filter((x) => x !== role)));

  const submit = async (e: React.FormEvent) => {
    e.preventDefault();
    if (roles.length === 0) {
      setError("Choose at least one: rent GPUs, or provide them.");
      return;
    }
    setBusy(true);
    setError(null);
    try {
      await signup(email, password, roles);
      after();
    } catch (err) {
      setError((err as Error).message);
    } finally {
      setBusy(false);
    }
  };

  return (
    <div className="mx-auto max-w-md">
      <h1 className="mb-4 text-2xl font-bold text-slate-900">Create an account</h1>
      <Card>
        <form className="space-y-4" onSubmit={(e) => void submit(e)}>
          <TextField label="Email" type="email" autoComplete="email" required value={email} onChange={(e) => setEmail(e.target.value)} />
          <TextField label="Password" type="password" autoComplete="new-password" required minLength={10} value={password} onChange={(e) => setPassword(e.target.value)} hint="At least 10 characters." />
          <fieldset>
            <legend className="text-sm font-medium text-slate-800">I want to</legend>
            <label className="mt-2 flex items-center gap-2 text-sm text-slate-800">
              <input type="checkbox" name="role-customer" checked={roles.includes("customer")} onChange={(e) => toggle("customer", e.target.checked)} /> rent GPU clusters (customer)
            </label>
            <label className="mt-1 flex items-center gap-2 text-sm text-slate-800">
              <input type="checkbox" name="role-provider" checked={roles.includes("provider")} onChange={(e) => toggle("provider", e.target.checked)} /> earn with my machines (provider)
            </label>
          </fieldset>
          {error && (
            <p role="alert" className="text-sm text-red-800">
              {error}
            </p>
          )}
          <Button type="submit" className="w-full" loading={busy}>
            Create account
          </Button>
        </form>
        <div className="mt-4">
          <OtherSignIn />
        </div>
      </Card>
      <p className="mt-4 text-center text-sm text-slate-700">
        Have an account? <Link className="font-medium text-brand-700 underline" to="/login">Sign in</Link>
      </p>
    </div>
  );
}
