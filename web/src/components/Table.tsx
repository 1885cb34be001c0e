import type { ReactNode } from "react";

export interface Column<T> {
  key: string;
  header: ReactNode;
  render: (row: T) => ReactNode;
  className?: string;
}

/** Cells keep to one line unless the column says how it wraps: two `whitespace-` utilities on
 *  one cell win by stylesheet order, not by which came last (the audit log's Details). */
function wrapping(className: string | undefined): string {
  return /(^|\s)whitespace-/.test(className ?? "") ? (className ?? "") : `whitespace-nowrap ${className ?? ""}`;
}

/** A responsive table: scrolls sideways on narrow screens rather than squeezing. */
export function Table<T>({ columns, rows, rowKey, caption, empty }: { columns: Column<T>[]; rows: T[]; rowKey: (row: T) => string | number; caption?: string; empty?: ReactNode }) {
  if (rows.length === 0 && empty) return <>{empty}</>;
  return (
    // `relative`: the scroll box must contain its absolutely placed cells' text (sr-only
    // headers), or they widen the whole page by the table's hidden width on a phone.
    <div className="relative overflow-x-auto rounded-md border border-slate-200" tabIndex={0} role="region" aria-label={caption ?? "table"}>
      <table className="min-w-full divide-y divide-slate-200 text-sm">
        {caption && <caption className="sr-only">{caption}</caption>}
        <thead className="bg-slate-50">
          <tr>
            {columns.map((c) => (
              <th key={c.key} scope="col" className={`px-3 py-2 text-left font-medium whitespace-nowrap text-slate-700 ${c.className ?? ""}`}>
                {c.header}
              </th>
            ))}
          </tr>
        </thead>
        <tbody className="divide-y divide-slate-100 bg-white">
          {rows.map((row) => (
            <tr key={rowKey(row)}>
              {columns.map((c) => (
                <td key={c.key} className={`px-3 py-2 text-slate-800 ${wrapping(c.className)}`}>
                  {c.render(row)}
                </td>
              ))}
            </tr>
          ))}
        </tbody>
      </table>
    </div>
  );
}
