import { keepPreviousData, useQuery } from "@tanstack/react-query";
import { useState, type FormEvent } from "react";
import { api, unwrap, type Schemas } from "@/api/client";
import { Button } from "@/components/Button";
import { Card, PageHeader } from "@/components/Card";
import { TextField } from "@/components/Field";
import { formatDateTime, shortId } from "@/components/format";
import { EmptyState, QueryView } from "@/components/States";
import { Table } from "@/components/Table";
import {
  auditFilterErrors,
  auditSubject,
  buildAuditQuery,
  currentCursor,
  EMPTY_AUDIT_FILTERS,
  firstPage,
  nextPage,
  previousPage,
  type AuditFilters,
  type AuditQuery,
} from "./lib";

type AuditEvent = Schemas["AuditEventOut"];

export const fetchAudit = (query: AuditQuery) => unwrap(api.GET("/api/v1/internal/audit", { params: { query } }));

export default function Audit() {
  const [draft, setDraft] = useState<AuditFilters>(EMPTY_AUDIT_FILTERS);
  const [applied, setApplied] = useState<AuditFilters>(EMPTY_AUDIT_FILTERS);
  const [pager, setPager] = useState(firstPage<number>);
  const errors = auditFilterErrors(draft);
  const query = buildAuditQuery(applied, currentCursor(pager));
  const result = useQuery({ queryKey: ["admin", "audit", query], queryFn: () => fetchAudit(query), placeholderData: keepPreviousData });

  const apply = (e: FormEvent) => {
    e.preventDefault();
    if (Object.keys(errors).length) return;
    setApplied(draft);
    setPager(firstPage());
  };
  const clear = () => {
    setDraft(EMPTY_AUDIT_FILTERS);
    setApplied(EMPTY_AUDIT_FILTERS);
    setPager(firstPage());
  };
  const page = pager.cursors.length;

  return (
    <div className="space-y-6">
      <PageHeader title="Audit log" description="Who did what, newest first. Filter by action, actor or time." />
      <Card title="Filters">
        <form onSubmit={apply} className="grid gap-4 sm:grid-cols-3" aria-label="Audit log filters">
          <TextField label="Action" placeholder="e.g. admin.roles_changed" value={draft.action} error={errors.action} onChange={(e) => setDraft({ ...draft, action: e.target.value })} />
          <TextField label="Actor user id" placeholder="UUID" value={draft.actor} error={errors.actor} onChange={(e) => setDraft({ ...draft, actor: e.target.value })} />
          <TextField label="Since (UTC)" type="datetime-local" value={draft.since} error={errors.since} onChange={(e) => setDraft({ ...draft, since: e.target.value })} />
          <div className="flex flex-wrap gap-2 sm:col-span-3">
            <Button type="submit" disabled={Object.keys(errors).length > 0}>
              Apply filters
            </Button>
            <Button variant="ghost" onClick={clear}>
              Clear
            </Button>
          </div>
        </form>
      </Card>
      <Card title={`Events — page ${page}`}>
        <QueryView query={result} loadingLabel="Loading audit events…">
          {(data) => (
            <div className="space-y-3" aria-busy={result.isFetching}>
              <Table<AuditEvent>
                caption="Audit events, newest first"
                rows={data.items}
                rowKey={(e) => e.id}
                empty={
                  <EmptyState title="No audit events match" action={<Button variant="secondary" onClick={clear}>Clear filters</Button>}>
                    Try a different action or an earlier time.
                  </EmptyState>
                }
                columns={[
                  { key: "at", header: "When", render: (e) => formatDateTime(e.at) },
                  { key: "action", header: "Action", render: (e) => <code className="text-xs">{e.action}</code> },
                  {
                    key: "actor",
                    header: "Actor",
                    render: (e) =>
                      e.actor_user_id ? (
                        <button
                          type="button"
                          className="text-brand-700 underline"
                          title={`Show only events by ${e.actor_user_id}`}
                          onClick={() => {
                            const f = { ...applied, actor: e.actor_user_id ?? "" };
                            setDraft(f);
                            setApplied(f);
                            setPager(firstPage());
                          }}
                        >
                          {e.actor_kind} {shortId(e.actor_user_id)}
                        </button>
                      ) : (
                        e.actor_kind
                      ),
                  },
                  { key: "subject", header: "Subject", render: (e) => <span title={e.subject_id ?? undefined}>{auditSubject(e.subject_type, e.subject_id)}</span> },
                  { key: "ip", header: "IP", render: (e) => e.ip ?? "—" },
                  {
                    key: "details",
                    header: "Details",
                    className: "whitespace-normal",
                    render: (e) => <code className="block max-w-96 text-xs break-all">{Object.keys(e.details).length ? JSON.stringify(e.details) : "—"}</code>,
                  },
                ]}
              />
              <nav aria-label="Audit pages" className="flex items-center justify-between gap-2">
                <Button variant="secondary" onClick={() => setPager(previousPage(pager))} disabled={page <= 1}>
                  Newer
                </Button>
                <span className="text-sm text-slate-600">Page {page}</span>
                <Button
                  variant="secondary"
                  onClick={() => data.next_before_id !== null && setPager(nextPage(pager, data.next_before_id))}
                  disabled={data.next_before_id === null}
                >
                  Older
                </Button>
              </nav>
            </div>
          )}
        </QueryView>
      </Card>
    </div>
  );
}
