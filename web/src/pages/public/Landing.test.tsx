import "@testing-library/jest-dom/vitest";
import { QueryClient, QueryClientProvider } from "@tanstack/react-query";
import { render, screen } from "@testing-library/react";
import { MemoryRouter } from "react-router";
import { api } from "@/api/client";
import Landing from "./Landing";

const pool = (over: Record<string, unknown> = {}) => ({
  gpus_online: 0,
  gpu_devices_online: 0,
  cpu_devices_online: 1,
  cpu_cores_online: 16,
  avg_gpu_utilization_pct: null,
  avg_cpu_percent: null,
  by_model_region: [],
  min_cpu_price_per_hour_micro: 1_000_000,
  platform_fee_bps: 1000,
  computed_at: "2026-12-07T10:00:00Z",
  ...over,
});

function renderIt(stats: ReturnType<typeof pool>) {
  vi.spyOn(api, "GET").mockResolvedValue({ data: stats, response: new Response(null, { status: 200 }) } as never);
  const client = new QueryClient({ defaultOptions: { queries: { retry: false } } });
  render(
    <QueryClientProvider client={client}>
      <MemoryRouter>
        <Landing />
      </MemoryRouter>
    </QueryClientProvider>,
  );
}

/** Base (not hover:, not focus:) utilities of one kind in a class list. */
const base = (el: HTMLElement, prefix: RegExp) => el.className.split(/\s+/).filter((c) => prefix.test(c));

afterEach(() => vi.restoreAllMocks());

describe("Landing", () => {
  it("gives a price while only CPU devices are online, and says the fee", async () => {
    renderIt(pool());
    await vi.waitFor(() => expect(screen.getByTestId("landing-from")).toHaveTextContent("$1.00"));
    expect(screen.getByTestId("landing-from-unit")).toHaveTextContent("per node·h, listed; + 10% platform fee");
  });

  it("prices per GPU-hour when a GPU is online", async () => {
    renderIt(pool({ gpus_online: 1, by_model_region: [{ gpu_model: "NVIDIA A100", region: "eu", devices: 1, gpus: 1, avg_utilization_pct: null, min_price_per_gpu_hour_micro: 2_000_000 }] }));
    await vi.waitFor(() => expect(screen.getByTestId("landing-from")).toHaveTextContent("$2.00"));
    expect(screen.getByTestId("landing-from-unit")).toHaveTextContent("per GPU·h, listed; + 10% platform fee");
  });

  it("draws the hero's links in one colour each, none white on white", async () => {
    renderIt(pool());
    for (const name of ["Start renting", "Provide GPUs", "See the live pool →"]) {
      const link = screen.getByRole("link", { name });
      // One background and one text colour: two utilities of a kind win by stylesheet order.
      expect(base(link, /^!?bg-/).length, `${name}: ${link.className}`).toBeLessThanOrEqual(1);
      expect(base(link, /^!?text-(white|slate|brand)/).length, `${name}: ${link.className}`).toBe(1);
    }
    const provide = screen.getByRole("link", { name: "Provide GPUs" });
    expect(provide.className).not.toMatch(/(^|\s)bg-white(\s|$)/);
    expect(provide.className).toMatch(/(^|\s)text-white(\s|$)/);
  });
});
