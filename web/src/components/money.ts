/** Money from the API is integer micro-USDC (1 USDC = 1 000 000 micro). */

export const MICRO_PER_USDC = 1_000_000;

/**
 * "$1,234.56" for 1_234_560_000. Amounts below a cent keep their significant digits
 * ("$0.0042"), so small per-second prices are not shown as $0.00.
 */
export function formatUsdc(micro: number | null | undefined, opts: { sign?: boolean; unit?: boolean } = {}): string {
  if (micro === null || micro === undefined || !Number.isFinite(micro)) return "—";
  const negative = micro < 0;
  const abs = Math.abs(Math.trunc(micro));
  const whole = Math.floor(abs / MICRO_PER_USDC);
  const frac = abs % MICRO_PER_USDC;
  let fracDigits = String(frac).padStart(6, "0");
  if (abs >= 10_000 || abs === 0) {
    // Cents, rounded half up on the integer value (no float error).
    const cents = Math.round(abs / 10_000);
    const w = Math.floor(cents / 100);
    fracDigits = String(cents % 100).padStart(2, "0");
    return compose(negative, w, fracDigits, opts);
  }
  fracDigits = fracDigits.replace(/0+$/, "");
  return compose(negative, whole, fracDigits.length < 2 ? fracDigits.padEnd(2, "0") : fracDigits, opts);
}

function compose(negative: boolean, whole: number, frac: string, opts: { sign?: boolean; unit?: boolean }): string {
  const sign = negative ? "−" : opts.sign ? "+" : "";
  const body = `$${whole.toLocaleString("en-US")}.${frac}`;
  return `${sign}${body}${opts.unit ? " USDC" : ""}`;
}

/** Micro-USDC from what a person typed ("12.5", "$1,000", "0.000001"); null if not an amount. */
export function parseUsdc(text: string): number | null {
  const clean = text.trim().replace(/^\$/, "").replace(/,/g, "").replace(/\s*USDC$/i, "");
  const match = /^(\d+)(?:\.(\d{0,6}))?$/.exec(clean);
  if (!match) return null;
  const micro = Number(match[1]) * MICRO_PER_USDC + Number((match[2] ?? "").padEnd(6, "0"));
  return Number.isSafeInteger(micro) ? micro : null;
}

/** "$1.25/GPU·h" style price label. */
export function formatRate(microPerHour: number | null | undefined, per = "h"): string {
  return microPerHour === null || microPerHour === undefined ? "—" : `${formatUsdc(microPerHour)}/${per}`;
}

/** A listed (provider's) price with the platform fee on top, rounded up as the server does
 *  (`tesai.scheduling.pricing.fee_micro`). */
export function withFee(micro: number, feeBps: number): number {
  return micro + Math.ceil((micro * feeBps) / 10_000);
}

/** "10%" for 1000 basis points, "2.5%" for 250. */
export function formatFeeBps(feeBps: number): string {
  return `${Number((feeBps / 100).toFixed(2))}%`;
}

/** The sentence that goes with listed prices, so a quote's higher figure is never a surprise. */
export function feeNote(feeBps: number | null | undefined): string | null {
  if (!feeBps) return null;
  return `Listed prices are the providers'; a ${formatFeeBps(feeBps)} platform fee is added on top (a quote shows both).`;
}
