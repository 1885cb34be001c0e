import { useMutation, useQuery, useQueryClient } from "@tanstack/react-query";
import { useState } from "react";
import { api, unwrap, type Schemas } from "@/api/client";
import { Button } from "@/components/Button";
import { Card, PageHeader } from "@/components/Card";
import { CopyBlock, TextField } from "@/components/Field";
import { formatDateTime } from "@/components/format";
import { EmptyState, ErrorState, Notice, QueryView } from "@/components/States";
import { StatusBadge } from "@/components/StatusBadge";
import { Table } from "@/components/Table";

const SCOPES = [
  { scope: "read", label: "Read everything of the account" },
  { scope: "write", label: "Change account data" },
  { scope: "clusters", label: "Create and manage clusters and jobs" },
  { scope: "billing", label: "Deposits and billing" },
  { scope: "devices", label: "Provider devices" },
];

export default function ApiKeys() {
  const qc = useQueryClient();
  const [name, setName] = useState("");
  const [scopes, setScopes] = useState<string[]>(["read", "clusters"]);
  const [created, setCreated] = useState<Schemas["ApiKeyCreated"] | null>(null);
  const keys = useQuery({ queryKey: ["api-keys"], queryFn: () => unwrap(api.GET("/api/v1/auth/api-keys")) });
  const create = useMutation({
    mutationFn: () => unwrap(api.POST("/api/v1/auth/api-keys", { body: { name, scopes } })),
    onSuccess: (k) => {
      setCreated(k);
      setName("");
      void qc.invalidateQueries({ queryKey: ["api-keys"] });
    },
  });
  const revoke = useMutation({
    mutationFn: (id: string) => unwrap(api.DELETE("/api/v1/auth/api-keys/{key_id}", { params: { path: { key_id: id } } })),
    onSuccess: () => void qc.invalidateQueries({ queryKey: ["api-keys"] }),
  });
  return (
    <div className="space-y-6">
      <PageHeader title="API keys" description="Keys for scripts, the CLI and Ray tooling. A key is shown once, when created." />
      <Card title="Create a key">
        <form
          className="space-y-4"
          onSubmit={(e) => {
            e.preventDefault();
            create.mutate();
          }}
        >
          <div className="max-w-sm">
            <TextField label="Name" value={name} onChange={(e) => setName(e.target.value)} placeholder="e.g. training laptop" maxLength={120} />
          </div>
          <fieldset>
            <legend className="text-sm font-medium text-slate-800">Scopes</legend>
            <div className="mt-2 grid gap-2 sm:grid-cols-2">
              {SCOPES.map((s) => (
                <label key={s.scope} className="flex items-center gap-2 text-sm text-slate-800">
                  <input type="checkbox" checked={scopes.includes(s.scope)} onChange={(e) => setScopes((cur) => (e.target.checked ? [...cur, s.scope] : cur.filter((x) => x !== s.scope)))} />
                  <code>{s.scope}</code> — {s.label}
                </label>
              ))}
            </div>
          </fieldset>
          <Button type="submit" loading={create.isPending} disabled={scopes.length === 0}>
            Create key
          </Button>
          {create.error && <ErrorState error={create.error} />}
        </form>
        {created && (
          <div className="mt-4 space-y-2">
            <Notice tone="warning">Copy this key now: it will not be shown again.</Notice>
            <CopyBlock label="New API key" text={created.key} />
          </div>
        )}
      </Card>
      <Card title="Your keys">
        <QueryView query={keys}>
          {(rows) => (
            <Table
              caption="API keys"
              rows={rows}
              rowKey={(k) => k.id}
              empty={<EmptyState title="No keys yet">Create one above to use the API from scripts.</EmptyState>}
              columns={[
                { key: "n", header: "Name", render: (k) => k.name || "—" },
                { key: "p", header: "Prefix", render: (k) => <code>{k.prefix}…</code> },
                { key: "s", header: "Scopes", render: (k) => k.scopes.join(", ") },
                { key: "c", header: "Created", render: (k) => formatDateTime(k.created_at) },
                { key: "u", header: "Last used", render: (k) => formatDateTime(k.last_used_at) },
                {
                  key: "a",
                  header: "State",
                  render: (k) =>
                    k.revoked_at ? (
                      <StatusBadge status="revoked" />
                    ) : (
                      <Button variant="ghost" className="px-2 py-1 text-red-800" onClick={() => revoke.mutate(k.id)} aria-label={`Revoke key ${k.prefix}`}>
                        Revoke
                      </Button>
                    ),
                },
              ]}
            />
          )}
        </QueryView>
      </Card>
    </div>
  );
}
