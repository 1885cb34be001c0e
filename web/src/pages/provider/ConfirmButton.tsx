import { useState, type ReactNode } from "react";
import { Button } from "@/components/Button";

/** A button that asks once more inline before running a destructive action. */
export function ConfirmButton({
  label,
  confirmLabel,
  question,
  onConfirm,
  loading = false,
  variant = "danger",
  disabled = false,
}: {
  label: string;
  confirmLabel: string;
  question: ReactNode;
  onConfirm: () => void;
  loading?: boolean;
  variant?: "danger" | "secondary";
  disabled?: boolean;
}) {
  const [asking, setAsking] = useState(false);
  if (!asking) {
    return (
      <Button variant={variant === "danger" ? "secondary" : variant} onClick={() => setAsking(true)} loading={loading} disabled={disabled}>
        {label}
      </Button>
    );
  }
  return (
    <div role="group" aria-label={label} className="flex flex-wrap items-center gap-2 rounded-md border border-amber-200 bg-amber-50 p-2 text-sm text-amber-900">
      <span>{question}</span>
      <Button
        variant={variant}
        onClick={() => {
          setAsking(false);
          onConfirm();
        }}
      >
        {confirmLabel}
      </Button>
      <Button variant="ghost" onClick={() => setAsking(false)}>
        Cancel
      </Button>
    </div>
  );
}
