/**
 * Chart wrappers. Recharts is large, so it loads only when a chart is first drawn
 * (keeps the first page load small); the wrappers have a fixed height while loading.
 */
import { lazy, Suspense } from "react";

export interface Series {
  key: string;
  label: string;
  color?: string;
}

export interface TimeSeriesProps {
  /** Rows with a time value under `xKey` (epoch ms or ISO string) and one number per series. */
  data: Record<string, number | string | null>[];
  series: Series[];
  xKey?: string;
  height?: number;
  unit?: string;
  xFormat?: (value: number | string) => string;
  stacked?: boolean;
  /** The values are counts of things (machines, GPUs): no fractional ticks on the y-axis. */
  counts?: boolean;
}

export interface BarChartProps {
  data: Record<string, number | string | null>[];
  series: Series[];
  xKey: string;
  height?: number;
  unit?: string;
  valueFormat?: (value: number) => string;
}

const TimeSeriesImpl = lazy(() => import("@/components/charts-impl").then((m) => ({ default: m.TimeSeriesImpl })));
const BarChartImpl = lazy(() => import("@/components/charts-impl").then((m) => ({ default: m.BarChartImpl })));

function Frame({ label, height, children }: { label: string; height: number; children: React.ReactNode }) {
  return (
    <figure role="img" aria-label={label} style={{ minHeight: height }} className="w-full">
      <Suspense fallback={<div style={{ height }} className="animate-pulse rounded bg-slate-100" />}>{children}</Suspense>
    </figure>
  );
}

/** An area chart over time. `label` describes it for screen readers. */
export function TimeSeriesChart({ label, ...props }: TimeSeriesProps & { label: string }) {
  const height = props.height ?? 240;
  return (
    <Frame label={label} height={height}>
      <TimeSeriesImpl {...props} height={height} />
    </Frame>
  );
}

/** A bar chart over categories (`xKey`). */
export function BarChartView({ label, ...props }: BarChartProps & { label: string }) {
  const height = props.height ?? 240;
  return (
    <Frame label={label} height={height}>
      <BarChartImpl {...props} height={height} />
    </Frame>
  );
}
