import "@testing-library/jest-dom/vitest";
import { QueryClient, QueryClientProvider } from "@tanstack/react-query";
import { render, screen } from "@testing-library/react";
import userEvent from "@testing-library/user-event";
import { MemoryRouter, Route, Routes } from "react-router";
import { api } from "@/api/client";
import ClusterDetail from "./ClusterDetail";

const id = "11111111-2222-3333-4444-555555555555";
const node = (role: string, state: string, index: number) => ({
  id: `n${index}`,
  device_id: `d${index}`,
  index,
  role,
  state,
  state_reason: state === "lost" ? "device_offline" : null,
  gpus: 1,
  price_per_hour_micro: 1_000_000,
  running_at: null,
  lost_at: null,
  released_at: null,
  healthy_seconds: 60,
});
const cluster = (over: Record<string, unknown> = {}) => ({
  id,
  name: "cpu-one",
  status: "running",
  status_reason: null,
  gpu_model: null,
  gpus: 1,
  min_gpus: null,
  max_gpus: null,
  duration_s: 3600,
  ends_at: null,
  hourly_price_micro: 1_000_000,
  hold_micro: 830_000,
  budget_micro: null,
  ray_version: "2.55.0",
  created_at: "2026-12-07T10:00:00Z",
  running_at: "2026-12-07T10:01:00Z",
  terminated_at: null,
  ray_address: null,
  nodes: [node("head", "running", 0)],
  events: [],
  ...over,
});
const job = { id: "99999999-0000-0000-0000-000000000000", cluster_id: id, submission_id: "raysubmit_1", entrypoint: "python train.py", status: "SUCCEEDED", message: null, submitted_via: "tesai", max_retries: 0, attempts: 1, created_at: "2026-12-07T10:02:00Z", finished_at: null };
const answer = (data: unknown) => ({ data, response: new Response(null, { status: 200 }) }) as never;

function renderIt(detail: ReturnType<typeof cluster>) {
  vi.spyOn(api, "GET").mockImplementation(((path: string) => {
    if (path === "/api/v1/clusters/{cluster_id}") return Promise.resolve(answer(detail));
    if (path === "/api/v1/clusters/{cluster_id}/jobs") return Promise.resolve(answer([job]));
    if (path === "/api/v1/customer/balance") return Promise.resolve(answer({ available_micro: 0, held_micro: 700_000, holds: { [`cluster:${id}`]: 700_000 } }));
    return Promise.reject(new Error(`unexpected GET ${path}`));
  }) as never);
  vi.spyOn(globalThis, "fetch").mockResolvedValue(new Response("\u001b[36m(raylet)\u001b[0m hello \u001b[1;32mdone\u001b[0m\n"));
  const client = new QueryClient({ defaultOptions: { queries: { retry: false } } });
  render(
    <QueryClientProvider client={client}>
      <MemoryRouter initialEntries={[`/app/clusters/${id}`]}>
        <Routes>
          <Route path="/app/clusters/:clusterId" element={<ClusterDetail />} />
        </Routes>
      </MemoryRouter>
    </QueryClientProvider>,
  );
}

afterEach(() => vi.restoreAllMocks());

describe("ClusterDetail", () => {
  it("calls one CPU node a CPU node, and shows what is held now as billing does", async () => {
    renderIt(cluster());
    expect(await screen.findByTestId("stat-hardware")).toHaveTextContent(/^1 CPU node$/);
    expect(screen.queryByRole("columnheader", { name: "GPUs" })).not.toBeInTheDocument();
    expect(await screen.findByTestId("stat-held-now")).toHaveTextContent("$0.70");
    expect(screen.getByText("of $0.83 held in all")).toBeInTheDocument();
    expect(screen.getByRole("button", { name: "Submit job" })).toBeEnabled();
  });

  it("shows a job's logs without terminal escape codes", async () => {
    renderIt(cluster());
    await userEvent.click(await screen.findByRole("button", { name: /Show logs of job/ }));
    const logs = await screen.findByTestId("job-logs");
    await vi.waitFor(() => expect(logs).toHaveTextContent("(raylet) hello done"));
    expect(logs.textContent).not.toContain("\u001b");
    expect(logs.textContent).not.toContain("[36m");
  });

  it("disables job submission and the dashboard while the head is lost", async () => {
    renderIt(cluster({ status: "degraded", status_reason: "head_lost", nodes: [node("head", "lost", 0), node("head", "starting", 1)] }));
    expect(await screen.findByRole("button", { name: "Submit job" })).toBeDisabled();
    expect(screen.getByText(/The head node is lost and being replaced/)).toBeInTheDocument();
    expect(screen.getByRole("button", { name: /Open Ray dashboard/ })).toBeDisabled();
    expect(screen.getByRole("button", { name: "Check the dashboard" })).toBeDisabled();
  });
});
