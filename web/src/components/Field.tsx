import { useId, type InputHTMLAttributes, type ReactNode, type SelectHTMLAttributes } from "react";

const inputClass =
  "mt-1 block w-full rounded-md border border-slate-300 bg-white px-3 py-2 text-sm text-slate-900 shadow-sm focus:border-brand-500 focus:outline-none focus:ring-1 focus:ring-brand-500";

export function TextField({ label, hint, error, ...rest }: InputHTMLAttributes<HTMLInputElement> & { label: string; hint?: ReactNode; error?: string }) {
  const id = useId();
  return (
    <div>
      <label htmlFor={id} className="block text-sm font-medium text-slate-800">
        {label}
      </label>
      <input id={id} className={inputClass} aria-invalid={error ? true : undefined} aria-describedby={hint || error ? `${id}-hint` : undefined} {...rest} />
      {(hint || error) && (
        <p id={`${id}-hint`} className={`mt-1 text-xs ${error ? "text-red-700" : "text-slate-600"}`}>
          {error ?? hint}
        </p>
      )}
    </div>
  );
}

export function SelectField({ label, hint, children, ...rest }: SelectHTMLAttributes<HTMLSelectElement> & { label: string; hint?: ReactNode }) {
  const id = useId();
  return (
    <div>
      <label htmlFor={id} className="block text-sm font-medium text-slate-800">
        {label}
      </label>
      <select id={id} className={inputClass} {...rest}>
        {children}
      </select>
      {hint && <p className="mt-1 text-xs text-slate-600">{hint}</p>}
    </div>
  );
}

/** Copy-to-clipboard block for commands and keys. */
export function CopyBlock({ text, label }: { text: string; label: string }) {
  return (
    <div className="flex items-start gap-2">
      <pre aria-label={label} tabIndex={0} className="min-w-0 flex-1 overflow-x-auto rounded-md bg-slate-900 p-3 text-xs text-slate-100">
        <code>{text}</code>
      </pre>
      <button
        type="button"
        className="rounded-md border border-slate-300 bg-white px-3 py-2 text-xs font-medium text-slate-800 hover:bg-slate-100"
        onClick={() => void navigator.clipboard?.writeText(text)}
      >
        Copy
      </button>
    </div>
  );
}
