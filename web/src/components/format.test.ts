import { formatAxisNumber, formatPercent, stripAnsi, uptimeLabel } from "@/components/format";

describe("uptimeLabel", () => {
  const now = Date.parse("2026-03-01T12:00:00Z");
  it("names the device's life when it is shorter than 30 days", () => {
    expect(uptimeLabel("2026-03-01T11:54:00Z", now)).toBe("Uptime (since listed 6m ago)");
    expect(uptimeLabel("2026-02-27T12:00:00Z", now)).toBe("Uptime (since listed 2d ago)");
  });
  it("says 30 days once the device is older, or when its age is unknown", () => {
    expect(uptimeLabel("2025-12-01T00:00:00Z", now)).toBe("Uptime (30 days)");
    expect(uptimeLabel(null, now)).toBe("Uptime (30 days)");
  });
  it("shows a dash while nothing is measured yet", () => {
    expect(formatPercent(null, 1)).toBe("—");
  });
});

describe("stripAnsi", () => {
  it("removes colour codes, cursor moves and links, and keeps the text", () => {
    expect(stripAnsi("\u001b[36m(raylet)\u001b[0m started\n")).toBe("(raylet) started\n");
    expect(stripAnsi("\u001b[1;31mERROR\u001b[39;49m x\u001b[2K\u001b[1A")).toBe("ERROR x");
    expect(stripAnsi("\u001b]8;;https://ray.io\u0007ray\u001b]8;;\u0007")).toBe("ray");
    expect(stripAnsi("plain [not a code] 100%")).toBe("plain [not a code] 100%");
  });
});

describe("formatAxisNumber", () => {
  it("keeps ticks short: three significant digits, large values compact", () => {
    expect(formatAxisNumber(0.0025)).toBe("0.0025");
    expect(formatAxisNumber(0.00225)).toBe("0.00225");
    expect(formatAxisNumber(1 / 3)).toBe("0.333");
    expect(formatAxisNumber(2)).toBe("2");
    expect(formatAxisNumber(1250)).toBe("1.25K");
    expect(formatAxisNumber(12_000_000)).toBe("12M");
    expect(formatAxisNumber("Dec 7")).toBe("Dec 7");
  });
});
