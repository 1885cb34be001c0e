const tones: Record<string, string> = {
  green: "bg-green-100 text-green-800 ring-green-600/20",
  blue: "bg-blue-100 text-blue-800 ring-blue-600/20",
  amber: "bg-amber-100 text-amber-900 ring-amber-600/20",
  red: "bg-red-100 text-red-800 ring-red-600/20",
  gray: "bg-slate-100 text-slate-700 ring-slate-500/20",
};

const statusTone: Record<string, keyof typeof tones> = {
  running: "green", online: "green", active: "green", succeeded: "green", verified: "green", paid: "green", confirmed: "green", credited: "green", idle: "green", healthy: "green",
  pending: "blue", open: "blue", provisioning: "blue", starting: "blue", booting: "blue", joining: "blue", submitted: "blue", verifying: "blue", scaling: "blue", created: "blue", requested: "blue",
  degraded: "amber", draining: "amber", stopping: "amber", terminating: "amber", expired: "amber", unverified: "amber", busy: "amber", rented: "amber", offline: "amber", lost: "amber",
  failed: "red", error: "red", disabled: "red", banned: "red", rejected: "red", stopped: "gray",
  terminated: "gray", released: "gray", revoked: "gray", removed: "gray", cancelled: "gray",
};

export function toneOf(status: string): keyof typeof tones {
  return statusTone[status.toLowerCase()] ?? "gray";
}

export function StatusBadge({ status, title }: { status: string | null | undefined; title?: string }) {
  const s = status ?? "unknown";
  return (
    <span title={title} data-status={s} className={`inline-flex items-center rounded-full px-2 py-0.5 text-xs font-medium ring-1 ring-inset ${tones[toneOf(s)]}`}>
      {s.replace(/_/g, " ")}
    </span>
  );
}
