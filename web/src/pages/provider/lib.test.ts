import {
  CONNECTED,
  describeReason,
  earningsByDevice,
  formatBytes,
  hardwareSummary,
  keepPolling,
  REASONS,
  STATUS_HELP,
  telemetryRows,
  waitPhase,
  type TelemetryPoint,
  type UsageLine,
} from "./lib";

const NOW = Date.parse("2026-11-28T12:00:00Z");
const LATER = "2026-11-28T12:10:00Z";
const EARLIER = "2026-11-28T11:50:00Z";

describe("waitPhase", () => {
  it("waits for the agent until the join token expires", () => {
    expect(waitPhase(undefined, LATER, NOW)).toBe("waiting");
    expect(waitPhase({ status: "pending", last_seen_at: null }, LATER, NOW)).toBe("waiting");
    expect(waitPhase({ status: "pending", last_seen_at: null }, EARLIER, NOW)).toBe("expired");
    expect(waitPhase(undefined, "not a date", NOW)).toBe("waiting");
  });

  it("follows the device once the agent joined", () => {
    expect(waitPhase({ status: "verifying", last_seen_at: EARLIER }, EARLIER, NOW)).toBe("verifying");
    expect(waitPhase({ status: "online", last_seen_at: EARLIER }, EARLIER, NOW)).toBe("online");
    expect(waitPhase({ status: "busy", last_seen_at: EARLIER }, EARLIER, NOW)).toBe("online");
    expect(waitPhase({ status: "rejected", last_seen_at: EARLIER }, LATER, NOW)).toBe("rejected");
    expect(waitPhase({ status: "disabled", last_seen_at: null }, LATER, NOW)).toBe("disabled");
  });

  it("tells offline (seen before) from never joined", () => {
    expect(waitPhase({ status: "offline", last_seen_at: EARLIER }, EARLIER, NOW)).toBe("offline");
    expect(waitPhase({ status: "offline", last_seen_at: null }, LATER, NOW)).toBe("waiting");
    expect(waitPhase({ status: "drained", last_seen_at: null }, EARLIER, NOW)).toBe("expired");
  });

  it("keeps polling only while something can still change", () => {
    expect(["waiting", "verifying", "offline"].every((p) => keepPolling(p as never))).toBe(true);
    expect(["expired", "online", "rejected", "disabled"].some((p) => keepPolling(p as never))).toBe(false);
  });
});

describe("describeReason", () => {
  it("reads known codes, humanises unknown ones, dashes a missing one", () => {
    expect(describeReason("disabled_by_admin")).toBe("An admin disabled the device.");
    expect(describeReason("brand_new_code")).toBe("brand new code");
    expect(describeReason(null)).toBe("—");
    expect(describeReason("")).toBe("—");
  });

  it("has help for every status the connected set names", () => {
    for (const s of CONNECTED) expect(STATUS_HELP[s]).toBeTruthy();
    expect(Object.keys(REASONS)).toContain("undrained");
  });
});

describe("formatBytes and hardwareSummary", () => {
  it("scales bytes with one decimal below ten", () => {
    expect(formatBytes(0)).toBe("0 B");
    expect(formatBytes(1023)).toBe("1023 B");
    expect(formatBytes(1536)).toBe("1.5 KB");
    expect(formatBytes(10 * 1024)).toBe("10 KB");
    expect(formatBytes(24 * 2 ** 30)).toBe("24 GB");
    expect(formatBytes(3 * 2 ** 50)).toBe("3072 TB");
    expect(formatBytes(null)).toBe("—");
    expect(formatBytes(Number.NaN)).toBe("—");
  });

  it("summarises GPUs, else CPUs, else says nothing is reported", () => {
    expect(hardwareSummary({ gpu_model: "RTX 4090", gpu_count: 2, vram_bytes_per_gpu: 24 * 2 ** 30, cpu_cores: 32 })).toBe("2× RTX 4090 · 24 GB");
    expect(hardwareSummary({ gpu_model: null, gpu_count: 1, vram_bytes_per_gpu: 0, cpu_cores: 8 })).toBe("1× GPU");
    expect(hardwareSummary({ gpu_model: null, gpu_count: 0, vram_bytes_per_gpu: 0, cpu_cores: 16 })).toBe("CPU · 16 cores");
    expect(hardwareSummary({ gpu_model: null, gpu_count: 0, vram_bytes_per_gpu: 0, cpu_cores: 0 })).toBe("Not reported yet");
  });
});

describe("telemetryRows", () => {
  const point = (minute: string, over: Partial<TelemetryPoint> = {}): TelemetryPoint => ({
    minute,
    samples: 6,
    cpu_percent: 12.5,
    mem_used_bytes: 3 * 2 ** 30,
    gpu_utilization_pct: null,
    gpu_memory_used_bytes: null,
    gpu_temperature_c: null,
    gpu_power_w: null,
    ...over,
  });

  it("sorts by minute and converts memory to GiB", () => {
    const rows = telemetryRows([point("2026-11-28T10:01:00Z", { gpu_memory_used_bytes: 2 ** 29, gpu_utilization_pct: 80 }), point("2026-11-28T10:00:00Z")]);
    expect(rows.map((r) => r.t)).toEqual([Date.parse("2026-11-28T10:00:00Z"), Date.parse("2026-11-28T10:01:00Z")]);
    expect(rows[0]).toEqual({ t: Date.parse("2026-11-28T10:00:00Z"), gpu_util: null, gpu_mem_gib: null, temp: null, power: null, cpu: 12.5, mem_gib: 3 });
    expect(rows[1].gpu_mem_gib).toBe(0.5);
    expect(rows[1].gpu_util).toBe(80);
  });

  it("does not reorder the caller's array", () => {
    const points = [point("2026-11-28T10:01:00Z"), point("2026-11-28T10:00:00Z")];
    telemetryRows(points);
    expect(points[0].minute).toBe("2026-11-28T10:01:00Z");
  });
});

describe("earningsByDevice", () => {
  const line = (device_id: string, amount: number, settled: number, seconds: number): UsageLine => ({
    device_id,
    amount_micro: amount,
    settled_micro: settled,
    seconds,
    cluster_id: "c",
    node_id: `n-${Math.random()}`,
    price_per_hour_micro: 1,
  });

  it("sums per device, largest first, named from the device list", () => {
    const rows = earningsByDevice(
      [line("aaaaaaaa-1", 100, 100, 1800), line("bbbbbbbb-2", 500, 0, 3600), line("aaaaaaaa-1", 50, 0, 1800)],
      [{ id: "bbbbbbbb-2", name: "rig-b" }],
    );
    expect(rows).toEqual([
      { device_id: "bbbbbbbb-2", name: "rig-b", earned_micro: 500, settled_micro: 0, hours: 1, nodes: 1 },
      { device_id: "aaaaaaaa-1", name: "aaaaaaaa", earned_micro: 150, settled_micro: 100, hours: 1, nodes: 2 },
    ]);
  });

  it("is empty without usage", () => {
    expect(earningsByDevice([], [{ id: "x", name: "x" }])).toEqual([]);
  });
});
