import { feeNote, formatFeeBps, formatRate, formatUsdc, parseUsdc, withFee } from "@/components/money";

describe("formatUsdc", () => {
  it("formats whole and fractional amounts in dollars and cents", () => {
    expect(formatUsdc(0)).toBe("$0.00");
    expect(formatUsdc(1_000_000)).toBe("$1.00");
    expect(formatUsdc(1_234_560_000)).toBe("$1,234.56");
    expect(formatUsdc(12_345_678)).toBe("$12.35");
  });
  it("keeps sub-cent amounts visible", () => {
    expect(formatUsdc(4_200)).toBe("$0.0042");
    expect(formatUsdc(1)).toBe("$0.000001");
    expect(formatUsdc(5_000)).toBe("$0.005");
  });
  it("signs negatives and optional positives, and adds the unit", () => {
    expect(formatUsdc(-2_500_000)).toBe("−$2.50");
    expect(formatUsdc(2_500_000, { sign: true })).toBe("+$2.50");
    expect(formatUsdc(2_500_000, { unit: true })).toBe("$2.50 USDC");
  });
  it("shows a dash for missing values", () => {
    expect(formatUsdc(null)).toBe("—");
    expect(formatUsdc(undefined)).toBe("—");
    expect(formatUsdc(Number.NaN)).toBe("—");
  });
  it("rounds half a cent up without float error", () => {
    expect(formatUsdc(1_005_000)).toBe("$1.01");
    expect(formatUsdc(1_004_999)).toBe("$1.00");
  });
});

describe("parseUsdc", () => {
  it("reads typed amounts into integer micro-USDC", () => {
    expect(parseUsdc("12.5")).toBe(12_500_000);
    expect(parseUsdc("$1,000")).toBe(1_000_000_000);
    expect(parseUsdc("0.000001")).toBe(1);
    expect(parseUsdc("0.1")).toBe(100_000);
    expect(parseUsdc(" 3 USDC ")).toBe(3_000_000);
  });
  it("rejects what is not an amount", () => {
    for (const bad of ["", "abc", "-1", "1.0000001", "1e3", "1.2.3"]) expect(parseUsdc(bad)).toBeNull();
  });
  it("round-trips with formatUsdc", () => {
    expect(formatUsdc(parseUsdc("42.42"))).toBe("$42.42");
  });
});

describe("formatRate", () => {
  it("adds the unit", () => {
    expect(formatRate(350_000, "GPU·h")).toBe("$0.35/GPU·h");
    expect(formatRate(null)).toBe("—");
  });
});

describe("the platform fee", () => {
  it("adds the fee on top of a listed price, rounded up like the server", () => {
    expect(withFee(1_000_000, 1000)).toBe(1_100_000);
    expect(withFee(1, 1000)).toBe(2);
    expect(withFee(1_000_000, 0)).toBe(1_000_000);
  });
  it("says the fee next to listed prices", () => {
    expect(formatFeeBps(1000)).toBe("10%");
    expect(formatFeeBps(250)).toBe("2.5%");
    expect(feeNote(1000)).toContain("10% platform fee");
    expect(feeNote(0)).toBeNull();
  });
});
