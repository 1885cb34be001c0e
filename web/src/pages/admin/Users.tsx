import { keepPreviousData, useMutation, useQuery, useQueryClient } from "@tanstack/react-query";
import { useState, type FormEvent } from "react";
import { api, unwrap, type Schemas } from "@/api/client";
import { Button } from "@/components/Button";
import { Card, PageHeader } from "@/components/Card";
import { TextField } from "@/components/Field";
import { formatDateTime } from "@/components/format";
import { StatusBadge } from "@/components/StatusBadge";
import { EmptyState, ErrorState, QueryView } from "@/components/States";
import { Table } from "@/components/Table";
import { GiveCredit } from "./GiveCredit";
import { ROLES, toggleRole } from "./lib";

type User = Schemas["UserOut"];
const PAGE = 25;

export default function Users() {
  const [search, setSearch] = useState("");
  const [email, setEmail] = useState("");
  const [offset, setOffset] = useState(0);
  const query = useQuery({
    queryKey: ["admin", "users", email, offset],
    queryFn: () => unwrap(api.GET("/api/v1/internal/users", { params: { query: { email: email || undefined, limit: PAGE, offset } } })),
    placeholderData: keepPreviousData,
  });
  const submit = (e: FormEvent) => {
    e.preventDefault();
    setEmail(search.trim());
    setOffset(0);
  };
  return (
    <div className="space-y-6">
      <PageHeader title="Users and roles" description="Find an account, change what it may do or give it credit. Role changes apply on the user's next request; both are audited." />
      <Card>
        <form onSubmit={submit} className="flex flex-col gap-2 sm:flex-row sm:items-end" role="search" aria-label="Find users">
          <div className="flex-1">
            <TextField label="Email contains" value={search} onChange={(e) => setSearch(e.target.value)} placeholder="e.g. @example.com" />
          </div>
          <Button type="submit">Search</Button>
        </form>
      </Card>
      <QueryView query={query} loadingLabel="Loading users…">
        {(page) => (
          <Card title={`${page.total} user${page.total === 1 ? "" : "s"}`}>
            <Table<User>
              caption="Users, oldest first, with their roles"
              rows={page.items}
              rowKey={(u) => u.id}
              empty={<EmptyState title="No users match">Search for part of an email address, or clear the search.</EmptyState>}
              columns={[
                {
                  key: "user",
                  header: "User",
                  render: (u) => (
                    <span className="flex flex-col">
                      <span className="font-medium">{u.email ?? u.display_name}</span>
                      <code className="text-xs text-slate-600">{u.id}</code>
                    </span>
                  ),
                },
                { key: "active", header: "Account", render: (u) => <StatusBadge status={u.is_active ? "active" : "disabled"} /> },
                { key: "roles", header: "Roles", render: (u) => <RolesEditor user={u} /> },
                { key: "credit", header: "Credit", render: (u) => <GiveCredit user={u} /> },
                { key: "created", header: "Created", render: (u) => formatDateTime(u.created_at) },
              ]}
            />
            {page.total > PAGE && (
              <nav aria-label="User pages" className="mt-3 flex items-center justify-between gap-2">
                <Button variant="secondary" disabled={offset === 0} onClick={() => setOffset(Math.max(0, offset - PAGE))}>
                  Previous
                </Button>
                <span className="text-sm text-slate-600">
                  {offset + 1}–{Math.min(offset + PAGE, page.total)} of {page.total}
                </span>
                <Button variant="secondary" disabled={offset + PAGE >= page.total} onClick={() => setOffset(offset + PAGE)}>
                  Next
                </Button>
              </nav>
            )}
          </Card>
        )}
      </QueryView>
    </div>
  );
}

/** Checkboxes for a user's roles with a save button (at least one role). */
export function RolesEditor({ user }: { user: User }) {
  const queryClient = useQueryClient();
  const [roles, setRoles] = useState<string[]>(user.roles);
  const changed = [...roles].sort().join() !== [...user.roles].sort().join();
  const save = useMutation({
    mutationFn: () =>
      unwrap(
        api.PATCH("/api/v1/internal/users/{user_id}/roles", {
          params: { path: { user_id: user.id } },
          body: { roles: roles as (typeof ROLES)[number][] },
        }),
      ),
    onSuccess: (u) => {
      setRoles(u.roles);
      void queryClient.invalidateQueries({ queryKey: ["admin", "users"] });
    },
  });
  const who = user.email ?? user.display_name;
  return (
    <fieldset className="flex flex-wrap items-center gap-3">
      <legend className="sr-only">Roles of {who}</legend>
      {ROLES.map((r) => (
        <label key={r} className="inline-flex items-center gap-1 text-sm text-slate-800">
          <input
            type="checkbox"
            checked={roles.includes(r)}
            // The last role cannot be taken away: an account needs at least one.
            disabled={roles.length === 1 && roles[0] === r}
            title={roles.length === 1 && roles[0] === r ? "An account keeps at least one role" : undefined}
            onChange={(e) => setRoles(toggleRole(roles, r, e.target.checked))}
            aria-label={`${r} role for ${who}`}
          />
          {r}
        </label>
      ))}
      {changed && (
        <Button variant="primary" className="px-2 py-1" onClick={() => save.mutate()} loading={save.isPending} aria-label={`Save roles of ${who}`}>
          Save
        </Button>
      )}
      {save.error && <ErrorState title="Roles not saved" error={save.error} />}
    </fieldset>
  );
}
