/**
 * Words for what a cluster or an offer is made of. A CPU cluster counts nodes, a GPU cluster
 * counts GPUs: the API carries both in `gpus` (units) and tells them apart by `gpu_model`
 * (null on CPU), so every label goes through here rather than saying "GPU" by default.
 */

/** "1 node", "2 nodes"; `many` for irregular plurals. */
export function plural(n: number, one: string, many = `${one}s`): string {
  return `${n.toLocaleString("en-US")} ${n === 1 ? one : many}`;
}

/** What a cluster is: "2 × NVIDIA A100" on GPUs, "3 CPU nodes" on CPUs. */
export function clusterHardware(c: { gpu_model: string | null | undefined; gpus: number }): string {
  return c.gpu_model ? `${c.gpus} × ${c.gpu_model}` : plural(c.gpus, "CPU node");
}

/** The unit a size is counted in, for labels: "GPUs", "CPU nodes", or either before a pick. */
export function unitName(kind: "gpu" | "cpu" | null): string {
  return kind === "cpu" ? "CPU nodes" : kind === "gpu" ? "GPUs" : "GPUs or CPU nodes";
}

/** The unit of a listed price: per GPU-hour on GPU devices, per node-hour on CPU devices. */
export function rateUnit(gpuModel: string | null | undefined): string {
  return gpuModel ? "GPU·h" : "node·h";
}
