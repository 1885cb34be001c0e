/** Dates, durations and sizes for people. */

export function formatDateTime(iso: string | null | undefined): string {
  if (!iso) return "—";
  const d = new Date(iso);
  return Number.isNaN(d.getTime())
    ? "—"
    : d.toLocaleString("en-GB", { dateStyle: "medium", timeStyle: "short", timeZone: "UTC" }) + " UTC";
}

export function formatDuration(seconds: number | null | undefined): string {
  if (seconds === null || seconds === undefined || !Number.isFinite(seconds)) return "—";
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return `${s}s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m}m ${s % 60}s`.replace(/ 0s$/, "");
  const h = Math.floor(m / 60);
  if (h < 48) return `${h}h ${m % 60}m`.replace(/ 0m$/, "");
  return `${Math.floor(h / 24)}d ${h % 24}h`.replace(/ 0h$/, "");
}

const UPTIME_WINDOW_S = 30 * 86400;

/** What a device's uptime figure covers: the last 30 days, or its life since it was listed
 *  when that is shorter (a figure over 6 minutes must not read as a 30-day one). */
export function uptimeLabel(listedSince: string | null | undefined, now: number = Date.now()): string {
  const since = listedSince ? new Date(listedSince).getTime() : Number.NaN;
  const age = (now - since) / 1000;
  if (!Number.isFinite(age) || age >= UPTIME_WINDOW_S) return "Uptime (30 days)";
  return `Uptime (since listed ${formatDuration(age)} ago)`;
}

const AXIS = new Intl.NumberFormat("en-US", { notation: "compact", maximumSignificantDigits: 3 });

/** A chart axis's tick: three significant digits at most, large values compact ("0.0025",
 *  "1.5", "12K"), so a label is short enough for the axis that measures it. */
export function formatAxisNumber(value: number | string): string {
  const n = typeof value === "number" ? value : Number(value);
  return Number.isFinite(n) ? AXIS.format(n) : String(value);
}

export function formatPercent(value: number | null | undefined, digits = 0): string {
  return value === null || value === undefined || !Number.isFinite(value) ? "—" : `${value.toFixed(digits)}%`;
}

export function formatMb(mb: number | null | undefined): string {
  if (mb === null || mb === undefined) return "—";
  return mb >= 1024 ? `${(mb / 1024).toFixed(mb % 1024 ? 1 : 0)} GB` : `${mb} MB`;
}

export function shortId(id: string | null | undefined): string {
  return id ? id.slice(0, 8) : "—";
}

// CSI (colours, cursor moves: ESC [ … final), OSC (titles, links: ESC ] … BEL or ESC \) and
// the two-character escapes. Ray's log lines colour their prefixes with CSI.
const ANSI = /\u001b\[[0-?]*[ -/]*[@-~]|\u001b\][^\u0007\u001b]*(?:\u0007|\u001b\\)|\u001b[@-Z\\-_]/g;

/** Terminal text without its escape codes: a job's logs as a reader sees them in a terminal,
 *  not "[36m(raylet)[0m". Applied to the whole text so a code split over chunks goes too. */
export function stripAnsi(text: string): string {
  return text.replace(ANSI, "");
}
