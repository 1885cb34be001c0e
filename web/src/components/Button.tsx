import type { ButtonHTMLAttributes } from "react";
import { Link, type LinkProps } from "react-router";

/** The `on-dark` variants are for dark backgrounds (the landing page's hero). A variant owns
 *  its colours: a className that overrides them (`bg-transparent` over `bg-white`) loses or
 *  wins by stylesheet order, which is how "Provide GPUs" once showed white on white. */
type Variant = "primary" | "secondary" | "danger" | "ghost" | "light-on-dark" | "outline-on-dark" | "ghost-on-dark";

const base =
  "inline-flex items-center justify-center gap-2 rounded-md px-4 py-2 text-sm font-medium transition-colors disabled:cursor-not-allowed disabled:opacity-60";
const variants: Record<Variant, string> = {
  primary: "bg-brand-600 text-white hover:bg-brand-700",
  secondary: "border border-slate-300 bg-white text-slate-800 hover:bg-slate-100",
  danger: "bg-red-700 text-white hover:bg-red-800",
  ghost: "text-slate-700 hover:bg-slate-100",
  "light-on-dark": "bg-white text-slate-900 hover:bg-slate-100",
  "outline-on-dark": "border border-white/70 text-white hover:bg-white/10",
  "ghost-on-dark": "text-white hover:bg-white/10",
};

export function buttonClass(variant: Variant = "primary", extra = ""): string {
  return `${base} ${variants[variant]} ${extra}`;
}

export interface ButtonProps extends ButtonHTMLAttributes<HTMLButtonElement> {
  variant?: Variant;
  loading?: boolean;
}

export function Button({ variant = "primary", loading = false, className = "", children, disabled, type = "button", ...rest }: ButtonProps) {
  return (
    <button type={type} className={buttonClass(variant, className)} disabled={disabled || loading} aria-busy={loading || undefined} {...rest}>
      {loading && <Spinner />}
      {children}
    </button>
  );
}

export function ButtonLink({ variant = "primary", className = "", ...rest }: LinkProps & { variant?: Variant }) {
  return <Link className={buttonClass(variant, className)} {...rest} />;
}

export function Spinner({ label }: { label?: string }) {
  return (
    <span className="inline-flex items-center gap-2" role={label ? "status" : undefined}>
      <span className="size-4 animate-spin rounded-full border-2 border-current border-t-transparent" aria-hidden="true" />
      {label && <span>{label}</span>}
    </span>
  );
}
