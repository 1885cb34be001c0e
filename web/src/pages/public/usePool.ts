import { useQuery } from "@tanstack/react-query";
import { useEffect, useState } from "react";
import { api, unwrap, type Schemas } from "@/api/client";

export type PoolStats = Schemas["PoolStats"];

/** Live pool statistics, polled; `samples` keeps what this page has seen (a live trend). */
export function usePool(every = 5000) {
  const query = useQuery({ queryKey: ["pool"], queryFn: () => unwrap(api.GET("/api/v1/public/pool")), refetchInterval: every });
  const [samples, setSamples] = useState<{ t: number; gpus: number; util: number | null; cpus: number }[]>([]);
  const data = query.data;
  useEffect(() => {
    if (!data) return;
    setSamples((s) => [...s.slice(-119), { t: Date.now(), gpus: data.gpus_online, util: data.avg_gpu_utilization_pct, cpus: data.cpu_devices_online }]);
  }, [data]);
  return { query, samples };
}
