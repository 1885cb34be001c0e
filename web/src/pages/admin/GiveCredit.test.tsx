import { QueryClient, QueryClientProvider } from "@tanstack/react-query";
import { render, screen } from "@testing-library/react";
import userEvent from "@testing-library/user-event";
import { api } from "@/api/client";
import { GiveCredit } from "./GiveCredit";

const user = { id: "7d0c6a9e-3f0e-4d6b-9b7e-5a1f2c3d4e5f", email: "you@example.com", display_name: "you", roles: ["customer"], is_active: true, created_at: null };

function renderIt() {
  const client = new QueryClient({ defaultOptions: { mutations: { retry: false } } });
  render(
    <QueryClientProvider client={client}>
      <GiveCredit user={user} />
    </QueryClientProvider>,
  );
}

type PostArgs = { body: unknown; params: { header: { "Idempotency-Key": string } } };
const sent = (post: ReturnType<typeof vi.spyOn>) => post.mock.calls.map((c: unknown[]) => c[1] as PostArgs);
const created = (transaction_id: number, amount_micro: number) =>
  ({ data: { transaction_id, kind: "admin_grant", amount_micro }, response: new Response(null, { status: 201 }) }) as never;

afterEach(() => vi.restoreAllMocks());

describe("GiveCredit", () => {
  it("asks for an amount and a reason before sending anything", async () => {
    const post = vi.spyOn(api, "POST");
    renderIt();
    await userEvent.click(screen.getByRole("button", { name: "Give credit to you@example.com" }));
    await userEvent.type(screen.getByLabelText("Amount (USDC)"), "-3");
    await userEvent.click(screen.getByRole("button", { name: "Give credit" }));
    expect(screen.getByText("A positive amount in USDC, at most 6 decimals")).toBeInTheDocument();
    expect(screen.getByText(/Say why/)).toBeInTheDocument();
    expect(post).not.toHaveBeenCalled();
  });

  it("retries a grant whose answer was lost with the same idempotency key, then uses a new one", async () => {
    const post = vi
      .spyOn(api, "POST")
      .mockRejectedValueOnce(new TypeError("Failed to fetch"))
      .mockResolvedValueOnce(created(41, 25_000_000))
      .mockResolvedValueOnce(created(42, 1_000_000));
    renderIt();
    await userEvent.click(screen.getByRole("button", { name: "Give credit to you@example.com" }));
    await userEvent.type(screen.getByLabelText("Amount (USDC)"), "25");
    await userEvent.type(screen.getByLabelText("Reason"), "welcome credit");
    await userEvent.click(screen.getByRole("button", { name: "Give credit" }));
    expect(await screen.findByRole("alert")).toHaveTextContent("Failed to fetch");
    expect(screen.getByText(/Trying again is safe/)).toBeInTheDocument();

    await userEvent.click(screen.getByRole("button", { name: "Try again" }));
    expect(await screen.findByText("Credited $25.00 USDC to you@example.com (ledger transaction 41).")).toBeInTheDocument();
    const [first, retry] = sent(post);
    expect(first.body).toEqual({ user_id: user.id, amount_micro: 25_000_000, reason: "welcome credit" });
    expect(retry).toEqual(first); // same body, same key: the server answers it once

    // The next grant is a new operation: a new key.
    await userEvent.click(screen.getByRole("button", { name: "Give credit to you@example.com" }));
    await userEvent.type(screen.getByLabelText("Amount (USDC)"), "1");
    await userEvent.type(screen.getByLabelText("Reason"), "another");
    await userEvent.click(screen.getByRole("button", { name: "Give credit" }));
    expect(await screen.findByText(/ledger transaction 42/)).toBeInTheDocument();
    expect(sent(post)[2].params.header["Idempotency-Key"]).not.toBe(first.params.header["Idempotency-Key"]);
  });
});
