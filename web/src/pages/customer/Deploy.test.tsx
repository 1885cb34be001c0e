import "@testing-library/jest-dom/vitest";
import { QueryClient, QueryClientProvider } from "@tanstack/react-query";
import { render, screen, within } from "@testing-library/react";
import userEvent from "@testing-library/user-event";
import { MemoryRouter } from "react-router";
import { api } from "@/api/client";
import Deploy from "./Deploy";

const offers = {
  offers: [],
  groups: [
    { gpu_model: null, listed_devices: 1, bookable_devices: 1, bookable_gpus: 0, min_price_per_gpu_hour_micro: 1_000_000 },
    { gpu_model: "NVIDIA A100", listed_devices: 2, bookable_devices: 1, bookable_gpus: 1, min_price_per_gpu_hour_micro: 2_000_000 },
  ],
  platform_fee_bps: 1000,
};
const quote = {
  id: "q1",
  expires_at: new Date(Date.now() + 60_000).toISOString(),
  shape: "1 × CPU node",
  region: "eu",
  devices: [{ device_id: "d1", region: "eu", gpu_count: 0, price_per_gpu_hour_micro: 1_000_000, hourly_micro: 1_000_000, score: 1 }],
  hourly_micro: 1_000_000,
  hourly_fee_micro: 100_000,
  hourly_total_micro: 1_100_000,
  compute_micro: 1_000_000,
  fee_micro: 100_000,
  total_micro: 1_100_000,
  reasons: [],
};
const gpuQuote = {
  ...quote,
  shape: "1×2",
  devices: [{ device_id: "d2", region: "eu", gpu_count: 2, price_per_gpu_hour_micro: 2_000_000, hourly_micro: 4_000_000, score: 1 }],
};
const answer = (data: unknown) => ({ data, response: new Response(null, { status: 200 }) }) as never;

function renderIt(quoted: unknown = quote) {
  vi.spyOn(api, "GET").mockResolvedValue(answer(offers));
  vi.spyOn(api, "POST").mockResolvedValue(answer(quoted));
  const client = new QueryClient({ defaultOptions: { queries: { retry: false } } });
  render(
    <QueryClientProvider client={client}>
      <MemoryRouter>
        <Deploy />
      </MemoryRouter>
    </QueryClientProvider>,
  );
}

afterEach(() => vi.restoreAllMocks());

describe("Deploy", () => {
  it("counts CPU in nodes, never GPUs, in the singular where there is one", async () => {
    renderIt();
    const cpu = await screen.findByTestId("bookable-__cpu__");
    expect(cpu).toHaveTextContent("1 CPU node bookable");
    expect(cpu).toHaveTextContent("from $1.00/node·h + 10% fee");
    expect(screen.getByTestId("bookable-NVIDIA A100")).toHaveTextContent("1 GPU bookable");
    // Before a pick the size is not called GPUs.
    expect(screen.getByLabelText("Number of GPUs or CPU nodes")).toBeInTheDocument();
    expect(screen.getByLabelText(/GPU memory/)).toBeInTheDocument();
    await userEvent.click(screen.getByRole("radio", { name: /CPU only/ }));
    expect(screen.getByLabelText("Number of CPU nodes")).toBeInTheDocument();
    expect(screen.queryByLabelText(/GPU memory/)).not.toBeInTheDocument();
    expect(screen.queryByText(/GPUs/)).not.toBeInTheDocument();
  });

  it("says the fee beside the listed prices and in the quote", async () => {
    renderIt();
    expect(await screen.findByTestId("fee-note")).toHaveTextContent("a 10% platform fee is added on top");
    await userEvent.click(screen.getByRole("radio", { name: /CPU only/ }));
    await userEvent.click(screen.getByRole("button", { name: "Get a quote" }));
    const q = await screen.findByTestId("quote");
    expect(q).toHaveTextContent("Listed price per hour$1.00");
    expect(q).toHaveTextContent("Platform fee per hour$0.10");
    expect(q).toHaveTextContent("Per hour, with the fee$1.10");
    expect(within(q).getByText("1 machine")).toBeInTheDocument();
    expect(within(q).getByTestId("quote-hardware")).toHaveTextContent(/^1 CPU node$/);
    expect(q).not.toHaveTextContent(/GPU/);
  });

  it("counts a GPU cluster in GPUs of the model picked, priced per GPU-hour", async () => {
    renderIt(gpuQuote);
    await userEvent.click(await screen.findByRole("radio", { name: /NVIDIA A100/ }));
    expect(screen.getByLabelText("Number of GPUs")).toBeInTheDocument();
    expect(screen.getByLabelText("Max listed price per GPU·h (USDC)")).toBeInTheDocument();
    expect(screen.getByTestId("bookable-NVIDIA A100")).toHaveTextContent("from $2.00/GPU·h + 10% fee");
    await userEvent.click(screen.getByRole("button", { name: "Get a quote" }));
    const q = await screen.findByTestId("quote");
    expect(within(q).getByTestId("quote-hardware")).toHaveTextContent(/^2 × NVIDIA A100$/);
    expect(q).not.toHaveTextContent(/CPU/);
  });
});
