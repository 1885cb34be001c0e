import { useState } from "react";
import { Link } from "react-router";
import { Button } from "@/components/Button";
import { Card } from "@/components/Card";
import { TextField } from "@/components/Field";
import { useAuth } from "@/stores/auth";
import { OtherSignIn, useAfterLogin } from "./common";

export default function Login() {
  const login = useAuth((s) => s.login);
  const after = useAfterLogin();
  const [email, setEmail] = useState("");
  const [password, setPassword] = useState("");
  const [error, setError] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);

  const submit = async (e: React.FormEvent) => {
    e.preventDefault();
    setBusy(true);
    setError(null);
    try {
      await login(email, password);
      after();
    } catch (err) {
      setError((err as Error).message);
    } finally {
      setBusy(false);
    }
  };

  return (
    <div className="mx-auto max-w-md">
      <h1 className="mb-4 text-2xl font-bold text-slate-900">Sign in</h1>
      <Card>
        <form className="space-y-4" onSubmit={(e) => void submit(e)}>
          <TextField label="Email" type="email" autoComplete="email" required value={email} onChange={(e) => setEmail(e.target.value)} />
          <TextField label="Password" type="password" autoComplete="current-password" required value={password} onChange={(e) => setPassword(e.target.value)} />
          {error && (
            <p role="alert" className="text-sm text-red-800">
              {error}
            </p>
          )}
          <Button type="submit" className="w-full" loading={busy}>
            Sign in
          </Button>
        </form>
        <div className="mt-4">
          <OtherSignIn />
        </div>
      </Card>
      <p className="mt-4 text-center text-sm text-slate-700">
        New here? <Link className="font-medium text-brand-700 underline" to="/signup">Create an account</Link>
      </p>
    </div>
  );
}
