/**
 * A button that runs an action with one of the browser's Solana wallets. The wallet code
 * (adapter, web3.js) is fetched on the first click; with several wallets the user picks one.
 */
import { useState } from "react";
import { Button, type ButtonProps } from "@/components/Button";
import type { ConsoleWallet } from "./wallets";

export const NO_WALLET = "No Solana wallet found in this browser. Install one (e.g. Phantom, Backpack, Solflare) and reload.";

interface WalletButtonProps extends Omit<ButtonProps, "onClick" | "loading"> {
  /** What to do with the chosen wallet; a thrown error is shown under the button. */
  run(wallet: ConsoleWallet): Promise<unknown>;
}

export function WalletButton({ run, children, ...button }: WalletButtonProps) {
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<string | null>(null);
  const [choices, setChoices] = useState<ConsoleWallet[]>([]);

  const use = async (wallet: ConsoleWallet) => {
    setChoices([]);
    setBusy(true);
    try {
      await run(wallet);
    } catch (e) {
      setError((e as Error).message || "The wallet refused.");
    } finally {
      setBusy(false);
    }
  };

  const start = async () => {
    setError(null);
    setBusy(true);
    let wallets: ConsoleWallet[];
    try {
      wallets = (await import("./wallets")).availableWallets();
    } catch (e) {
      setError((e as Error).message || "The wallet code failed to load; reload the page.");
      setBusy(false);
      return;
    }
    setBusy(false);
    if (wallets.length === 0) setError(NO_WALLET);
    else if (wallets.length === 1) await use(wallets[0]);
    else setChoices(wallets);
  };

  return (
    <div className="space-y-2">
      <Button {...button} onClick={() => void start()} loading={busy}>
        {children}
      </Button>
      {choices.length > 0 && (
        <fieldset className="space-y-2 rounded-md border border-slate-200 p-3">
          <legend className="px-1 text-sm text-slate-700">Choose a wallet</legend>
          {choices.map((w) => (
            <Button key={w.name} variant="secondary" className="w-full" onClick={() => void use(w)}>
              {w.icon && <img src={w.icon} alt="" width={20} height={20} />}
              {w.name}
            </Button>
          ))}
        </fieldset>
      )}
      {error && (
        <p role="alert" className="text-sm text-red-800">
          {error}
        </p>
      )}
    </div>
  );
}
