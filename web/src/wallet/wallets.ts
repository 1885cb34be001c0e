/**
 * The browser's Solana wallets, through the wallet adapter: Wallet Standard wallets (Phantom,
 * Backpack, Solflare, … register themselves) wrapped in `StandardWalletAdapter`, plus the legacy
 * injected provider (`window.phantom.solana` / `window.solana`) for wallets that only inject.
 *
 * Loaded lazily (`import("@/wallet/wallets")`): web3.js and the adapters stay out of the first
 * page load.
 */
import { isWalletAdapterCompatibleStandardWallet, type WalletName } from "@solana/wallet-adapter-base";
import { StandardWalletAdapter } from "@solana/wallet-standard-wallet-adapter-base";
import { Connection, PublicKey, type Transaction } from "@solana/web3.js";
import { getWallets } from "@wallet-standard/app";
import type { InjectedWallet } from "@/stores/auth";
import { depositTransaction } from "./transfer";

/** One wallet the console can use: connect, sign a message, sign and send a transaction. */
export interface ConsoleWallet extends InjectedWallet {
  readonly name: string;
  readonly icon: string;
  connect(): Promise<{ publicKey: PublicKey }>;
  signMessage(message: Uint8Array): Promise<Uint8Array>;
  /** Signs and sends through the wallet; returns the base58 signature. */
  sendTransaction(tx: Transaction, connection: Connection): Promise<string>;
}

/** The legacy injected provider's shape (Phantom's `window.solana` API). */
interface LegacyProvider extends InjectedWallet {
  isPhantom?: boolean;
  signAndSendTransaction?(tx: Transaction): Promise<{ signature: string }>;
  signTransaction?(tx: Transaction): Promise<Transaction>;
}

function standardWallet(adapter: StandardWalletAdapter): ConsoleWallet {
  return {
    name: adapter.name,
    icon: adapter.icon,
    get publicKey() {
      return adapter.publicKey;
    },
    async connect() {
      if (!adapter.connected) await adapter.connect();
      if (!adapter.publicKey) throw new Error(`${adapter.name} did not share an address`);
      return { publicKey: adapter.publicKey };
    },
    async signMessage(message) {
      if (!("signMessage" in adapter) || !adapter.signMessage) throw new Error(`${adapter.name} cannot sign messages`);
      return adapter.signMessage(message);
    },
    sendTransaction: (tx, connection) => adapter.sendTransaction(tx, connection),
  };
}

function legacyWallet(provider: LegacyProvider, name: string): ConsoleWallet {
  let key: PublicKey | null = null;
  return {
    name,
    icon: "",
    get publicKey() {
      return key;
    },
    async connect() {
      const connected = await provider.connect();
      const shared = (connected && connected.publicKey) || provider.publicKey;
      if (!shared) throw new Error("The wallet did not share its address");
      key = new PublicKey(shared.toString());
      return { publicKey: key };
    },
    async signMessage(message) {
      const signed = await provider.signMessage(message, "utf8");
      return signed instanceof Uint8Array ? signed : signed.signature;
    },
    async sendTransaction(tx, connection) {
      if (provider.signAndSendTransaction) return (await provider.signAndSendTransaction(tx)).signature;
      if (provider.signTransaction) return connection.sendRawTransaction((await provider.signTransaction(tx)).serialize());
      throw new Error(`${name} cannot send transactions`);
    },
  };
}

declare global {
  interface Window {
    solana?: InjectedWallet;
    phantom?: { solana?: InjectedWallet };
  }
}

const adapters = new Map<string, StandardWalletAdapter>();

/** Every usable wallet now: registered Wallet Standard wallets, then a legacy-only provider. */
export function availableWallets(): ConsoleWallet[] {
  const found: ConsoleWallet[] = [];
  for (const wallet of getWallets().get()) {
    if (!isWalletAdapterCompatibleStandardWallet(wallet)) continue;
    let adapter = adapters.get(wallet.name);
    if (!adapter) {
      adapter = new StandardWalletAdapter({ wallet });
      adapters.set(wallet.name, adapter);
    }
    found.push(standardWallet(adapter));
  }
  const legacy = (window.phantom?.solana ?? window.solana) as LegacyProvider | undefined;
  if (legacy && typeof legacy.connect === "function" && typeof legacy.signMessage === "function") {
    const name = legacy.isPhantom ? "Phantom" : "Browser wallet";
    // A wallet that both registers and injects is listed once, through the standard.
    if (!found.some((w) => w.name === (name as WalletName))) found.push(legacyWallet(legacy, name));
  }
  return found;
}

export interface PayDeposit {
  rpcUrl: string;
  decimals: number;
  deposit: { recipient: string; mint: string; reference: string; amount_micro: number };
}

/** Build the deposit's USDC transfer, have the wallet sign and send it; the signature. */
export async function payDeposit(wallet: ConsoleWallet, { rpcUrl, decimals, deposit }: PayDeposit): Promise<string> {
  const { publicKey } = await wallet.connect();
  const connection = new Connection(rpcUrl, "confirmed");
  const { blockhash, lastValidBlockHeight } = await connection.getLatestBlockhash("confirmed");
  const tx = depositTransaction({
    payer: publicKey,
    recipient: deposit.recipient,
    mint: deposit.mint,
    reference: deposit.reference,
    amountMicro: deposit.amount_micro,
    decimals,
    blockhash,
    lastValidBlockHeight,
  });
  return wallet.sendTransaction(tx, connection);
}
