/** Pure helpers of the admin area: query building for filters and paging, form checks. */

import { parseUsdc } from "@/components/money";

export const ROLES = ["customer", "provider", "admin"] as const;
export type RoleName = (typeof ROLES)[number];

export interface AuditFilters {
  action: string;
  actor: string;
  /** A `datetime-local` value ("2026-11-28T10:00"), read as UTC. */
  since: string;
}

export const EMPTY_AUDIT_FILTERS: AuditFilters = { action: "", actor: "", since: "" };

export interface AuditQuery {
  action?: string;
  actor?: string;
  since?: string;
  before_id?: number;
  limit: number;
}

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
const ACTION = /^[A-Za-z0-9_.:-]{1,64}$/;

/** Problems with the filters, by field (empty when they can be sent). */
export function auditFilterErrors(f: AuditFilters): Partial<Record<keyof AuditFilters, string>> {
  const errors: Partial<Record<keyof AuditFilters, string>> = {};
  if (f.action.trim() && !ACTION.test(f.action.trim())) errors.action = "Letters, digits and . _ : - only, e.g. admin.roles_changed";
  if (f.actor.trim() && !UUID.test(f.actor.trim())) errors.actor = "A user id (UUID)";
  if (f.since && sinceIso(f.since) === undefined) errors.since = "Not a valid date and time";
  return errors;
}

/** "2026-11-28T10:00" (UTC wall time) → "2026-11-28T10:00:00Z". */
function sinceIso(value: string): string | undefined {
  if (!value) return undefined;
  const withSeconds = /T\d{2}:\d{2}$/.test(value) ? `${value}:00` : value;
  const iso = /Z|[+-]\d{2}:\d{2}$/.test(withSeconds) ? withSeconds : `${withSeconds}Z`;
  return Number.isNaN(Date.parse(iso)) ? undefined : iso;
}

/** The query string parameters of GET /internal/audit for these filters and page cursor. */
export function buildAuditQuery(f: AuditFilters, beforeId: number | null, limit = 50): AuditQuery {
  const q: AuditQuery = { limit };
  const action = f.action.trim();
  const actor = f.actor.trim();
  const since = sinceIso(f.since);
  if (action) q.action = action;
  if (actor) q.actor = actor.toLowerCase();
  if (since) q.since = since;
  if (beforeId !== null) q.before_id = beforeId;
  return q;
}

/**
 * Keyset paging over newest-first pages: `cursors[i]` is the `before_id` of page i
 * (null for the first page). Next pushes the page's `next_before_id`; previous pops.
 */
export interface Pager<C = number> {
  cursors: (C | null)[];
}

export const firstPage = <C = number>(): Pager<C> => ({ cursors: [null] });
export const currentCursor = <C>(p: Pager<C>): C | null => p.cursors[p.cursors.length - 1];
export const nextPage = <C>(p: Pager<C>, next: C): Pager<C> => ({ cursors: [...p.cursors, next] });
export const previousPage = <C>(p: Pager<C>): Pager<C> => (p.cursors.length > 1 ? { cursors: p.cursors.slice(0, -1) } : p);

/**
 * Roles after toggling one, in `ROLES` order (unknown names dropped). Never empty, as the
 * API needs at least one: unticking the last role keeps it.
 */
export function toggleRole(roles: string[], role: RoleName, on: boolean): RoleName[] {
  const set = new Set(roles);
  if (on) set.add(role);
  else set.delete(role);
  const next = ROLES.filter((r) => set.has(r));
  return next.length > 0 ? next : ROLES.filter((r) => roles.includes(r));
}

/** Chart rows from an analytics report: the numeric columns per period (or first column). */
export function reportChart(columns: string[], rows: Record<string, unknown>[]): { xKey: string; series: string[]; data: Record<string, number | string | null>[] } | null {
  if (rows.length === 0) return null;
  const xKey = columns.includes("period") ? "period" : columns[0];
  const series = columns.filter((c) => c !== xKey && rows.some((r) => typeof r[c] === "number") && !/(^|_)id$|rank/.test(c)).slice(0, 4);
  if (series.length === 0) return null;
  const data = rows.map((r) => {
    const out: Record<string, number | string | null> = { [xKey]: String(r[xKey] ?? "") };
    for (const s of series) out[s] = typeof r[s] === "number" ? (r[s] as number) : null;
    return out;
  });
  return { xKey, series, data };
}

/** A credit grant as typed: its amount in micro-USDC, or why it cannot be sent, per field. */
export function creditGrant(amount: string, reason: string): { micro: number | null; errors: { amount?: string; reason?: string } } {
  const errors: { amount?: string; reason?: string } = {};
  const micro = amount.trim() ? parseUsdc(amount) : null;
  if (!amount.trim()) errors.amount = "Enter an amount in USDC, e.g. 25";
  else if (micro === null || micro <= 0) errors.amount = "A positive amount in USDC, at most 6 decimals";
  const why = reason.trim();
  if (!why) errors.reason = "Say why: it is kept in the ledger and the audit log";
  else if (why.length > 300) errors.reason = "At most 300 characters";
  return { micro: errors.amount ? null : micro, errors };
}

/** An audit event's subject for a table cell: "cluster 1a2b3c4d", and for a prefixed id such
 *  as a hold's "cluster:<uuid>" the prefix and the short id ("hold cluster:1a2b3c4d"), never a
 *  bare "cluster:". */
export function auditSubject(type: string | null | undefined, id: string | null | undefined): string {
  if (!type) return "—";
  if (!id) return type;
  const at = id.lastIndexOf(":");
  const short = (s: string) => (/^[0-9a-f-]{32,36}$/i.test(s) ? s.slice(0, 8) : s);
  return `${type} ${at < 0 ? short(id) : `${id.slice(0, at + 1)}${short(id.slice(at + 1))}`}`;
}
