/** Recharts implementations; loaded lazily through "@/components/charts". */
import { Area, AreaChart, Bar, BarChart, CartesianGrid, Legend, ResponsiveContainer, Tooltip, XAxis, YAxis } from "recharts";
import type { BarChartProps, TimeSeriesProps } from "@/components/charts";
import { formatAxisNumber } from "@/components/format";

export const PALETTE = ["#1d4ed8", "#047857", "#b45309", "#7c3aed", "#be123c", "#0e7490"];

// The y-axis is as wide as its longest tick label, measured in the page ("auto"): a fixed width
// clipped labels such as "0.0025" at its left edge. The margin keeps a rounded width's last
// pixel inside the drawing.
const MARGIN = { top: 8, right: 8, bottom: 0, left: 4 };

function timeTick(value: number | string): string {
  const d = new Date(value);
  return Number.isNaN(d.getTime()) ? String(value) : d.toLocaleTimeString("en-GB", { hour: "2-digit", minute: "2-digit", timeZone: "UTC" });
}

export function TimeSeriesImpl({ data, series, xKey = "t", height = 240, unit, xFormat = timeTick, stacked = false, counts = false }: TimeSeriesProps) {
  return (
    <ResponsiveContainer width="100%" height={height}>
      <AreaChart data={data} margin={MARGIN}>
        <CartesianGrid strokeDasharray="3 3" stroke="#e2e8f0" />
        <XAxis dataKey={xKey} tickFormatter={xFormat} stroke="#475569" fontSize={12} minTickGap={24} />
        <YAxis stroke="#475569" fontSize={12} width="auto" unit={unit} tickFormatter={formatAxisNumber} allowDecimals={!counts} />
        <Tooltip labelFormatter={(v) => xFormat(v as number)} />
        {series.length > 1 && <Legend />}
        {series.map((s, i) => (
          <Area
            key={s.key}
            type="monotone"
            dataKey={s.key}
            name={s.label}
            stackId={stacked ? "1" : undefined}
            stroke={s.color ?? PALETTE[i % PALETTE.length]}
            fill={s.color ?? PALETTE[i % PALETTE.length]}
            fillOpacity={0.15}
            isAnimationActive={false}
          />
        ))}
      </AreaChart>
    </ResponsiveContainer>
  );
}

export function BarChartImpl({ data, series, xKey, height = 240, unit, valueFormat }: BarChartProps) {
  return (
    <ResponsiveContainer width="100%" height={height}>
      <BarChart data={data} margin={MARGIN}>
        <CartesianGrid strokeDasharray="3 3" stroke="#e2e8f0" />
        <XAxis dataKey={xKey} stroke="#475569" fontSize={12} />
        <YAxis stroke="#475569" fontSize={12} width="auto" unit={unit} tickFormatter={valueFormat ?? formatAxisNumber} />
        <Tooltip formatter={valueFormat ? (v) => valueFormat(Number(v)) : undefined} />
        {series.length > 1 && <Legend />}
        {series.map((s, i) => (
          <Bar key={s.key} dataKey={s.key} name={s.label} fill={s.color ?? PALETTE[i % PALETTE.length]} isAnimationActive={false} />
        ))}
      </BarChart>
    </ResponsiveContainer>
  );
}
