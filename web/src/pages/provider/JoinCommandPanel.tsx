import { useState } from "react";
import { Button } from "@/components/Button";
import { formatDateTime } from "@/components/format";

/** The one-time join command to paste on the host, with copy and "new token" buttons. */
export function JoinCommandPanel({
  joinCommand,
  expiresAt,
  expired = false,
  onNewToken,
  renewing = false,
}: {
  joinCommand: string;
  expiresAt: string;
  expired?: boolean;
  onNewToken?: () => void;
  renewing?: boolean;
}) {
  const [copied, setCopied] = useState<"idle" | "copied" | "failed">("idle");

  const copy = async () => {
    try {
      if (!navigator.clipboard) throw new Error("no clipboard");
      await navigator.clipboard.writeText(joinCommand);
      setCopied("copied");
    } catch {
      setCopied("failed");
    }
  };

  return (
    <section aria-labelledby="join-command-heading" data-testid="join-command-panel" className="space-y-3">
      <h2 id="join-command-heading" className="text-base font-semibold text-slate-900">
        Run this on the host
      </h2>
      <p className="text-sm text-slate-700">
        Install the agent (<code className="rounded bg-slate-100 px-1">pip install tesai</code>), then run the command below on the
        machine with the GPUs. The token works once.
      </p>
      <div className="flex flex-col gap-2 sm:flex-row sm:items-start">
        <pre
          className="min-w-0 flex-1 overflow-x-auto rounded-md bg-slate-900 p-3 text-xs text-slate-100"
          aria-label="Join command"
          data-testid="join-command"
          tabIndex={0}
        >
          <code>{joinCommand}</code>
        </pre>
        <Button variant="secondary" onClick={() => void copy()} aria-label="Copy join command">
          Copy
        </Button>
      </div>
      <p aria-live="polite" className="text-xs text-slate-600">
        {copied === "copied" ? "Copied to the clipboard." : copied === "failed" ? "Could not copy: select the command and copy it by hand." : ""}
      </p>
      <p className={`text-sm ${expired ? "font-medium text-red-700" : "text-slate-600"}`}>
        {expired ? "This join token has expired: get a new one and run the new command." : `The token expires ${formatDateTime(expiresAt)}.`}
      </p>
      {onNewToken && (
        <Button variant={expired ? "primary" : "secondary"} onClick={onNewToken} loading={renewing}>
          Get a new join token
        </Button>
      )}
    </section>
  );
}
