import { gpuRows, sumByPeriod } from "./PoolExplorer";

describe("the pool history", () => {
  it("plots GPUs online from GPU models only, never a CPU device as a fraction of a GPU", () => {
    const rows = [
      { period: "2026-12-07T10:00:00Z", gpu_model: "cpu", region: "eu", gpus_online: 0.003, gpus_rented: 0 },
      { period: "2026-12-07T11:00:00Z", gpu_model: "cpu", region: "eu", gpus_online: 1, gpus_rented: 0.5 },
      { period: "2026-12-07T11:00:00Z", gpu_model: "NVIDIA A100", region: "eu", gpus_online: 2, gpus_rented: 1 },
    ];
    const series = sumByPeriod(gpuRows(rows), ["gpus_online", "gpus_rented"]);
    expect(series).toEqual([{ t: Date.parse("2026-12-07T11:00:00Z"), gpus_online: 2, gpus_rented: 1 }]);
  });
});
