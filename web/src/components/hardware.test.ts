import { clusterHardware, plural, rateUnit, unitName } from "@/components/hardware";

describe("plural", () => {
  it("says one thing in the singular and other counts in the plural", () => {
    expect(plural(1, "machine")).toBe("1 machine");
    expect(plural(0, "machine")).toBe("0 machines");
    expect(plural(2, "CPU node")).toBe("2 CPU nodes");
    expect(plural(1_200, "GPU")).toBe("1,200 GPUs");
  });
});

describe("clusterHardware", () => {
  it("names a CPU cluster's nodes, never GPUs", () => {
    expect(clusterHardware({ gpu_model: null, gpus: 1 })).toBe("1 CPU node");
    expect(clusterHardware({ gpu_model: null, gpus: 3 })).toBe("3 CPU nodes");
  });
  it("names a GPU cluster's GPUs by model", () => {
    expect(clusterHardware({ gpu_model: "NVIDIA A100", gpus: 2 })).toBe("2 × NVIDIA A100");
  });
});

describe("unitName and rateUnit", () => {
  it("count and price CPU in nodes, GPU in GPUs, and say both before a pick", () => {
    expect(unitName("cpu")).toBe("CPU nodes");
    expect(unitName("gpu")).toBe("GPUs");
    expect(unitName(null)).toBe("GPUs or CPU nodes");
    expect(rateUnit(null)).toBe("node·h");
    expect(rateUnit("NVIDIA H100")).toBe("GPU·h");
  });
});
