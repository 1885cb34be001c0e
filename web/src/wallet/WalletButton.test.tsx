import { render, screen } from "@testing-library/react";
import userEvent from "@testing-library/user-event";
import type { ConsoleWallet } from "./wallets";
import { NO_WALLET, WalletButton } from "./WalletButton";

const found: { wallets: ConsoleWallet[] } = { wallets: [] };
vi.mock("./wallets", () => ({ availableWallets: () => found.wallets }));

const wallet = (name: string) => ({ name, icon: "" }) as ConsoleWallet;

describe("WalletButton", () => {
  it("says what to do when the browser has no wallet", async () => {
    found.wallets = [];
    const run = vi.fn();
    render(<WalletButton run={run}>Pay with wallet</WalletButton>);
    await userEvent.click(screen.getByRole("button", { name: "Pay with wallet" }));
    expect(await screen.findByRole("alert")).toHaveTextContent(NO_WALLET);
    expect(run).not.toHaveBeenCalled();
  });

  it("uses the only wallet at once, and shows its refusal", async () => {
    found.wallets = [wallet("Phantom")];
    const run = vi.fn().mockRejectedValue(new Error("User rejected the request."));
    render(<WalletButton run={run}>Pay with wallet</WalletButton>);
    await userEvent.click(screen.getByRole("button", { name: "Pay with wallet" }));
    expect(await screen.findByRole("alert")).toHaveTextContent("User rejected the request.");
    expect(run).toHaveBeenCalledWith(found.wallets[0]);
  });

  it("lets the user choose among several wallets", async () => {
    found.wallets = [wallet("Phantom"), wallet("Backpack")];
    const run = vi.fn().mockResolvedValue(undefined);
    render(<WalletButton run={run}>Sign in with a Solana wallet</WalletButton>);
    await userEvent.click(screen.getByRole("button", { name: "Sign in with a Solana wallet" }));
    await userEvent.click(await screen.findByRole("button", { name: "Backpack" }));
    expect(run).toHaveBeenCalledWith(found.wallets[1]);
    expect(screen.queryByRole("button", { name: "Phantom" })).not.toBeInTheDocument();
  });
});
