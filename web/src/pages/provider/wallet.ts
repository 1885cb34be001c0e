/** Prove a payout wallet: the server's challenge, signed by the chosen wallet (src/wallet). */
import { api, unwrap } from "@/api/client";
import type { InjectedWallet } from "@/stores/auth";

/** Connect, fetch the challenge for the wallet's address, sign it, register the wallet. */
export async function linkPayoutWallet(wallet: InjectedWallet) {
  const connected = await wallet.connect();
  const key = (connected && connected.publicKey) || wallet.publicKey;
  if (!key) throw new Error("The wallet did not share its address");
  const address = key.toString();
  const { nonce, message } = await unwrap(api.POST("/api/v1/provider/payout-wallet/challenge", { body: { address } }));
  const signed = await wallet.signMessage(new TextEncoder().encode(message), "utf8");
  const signature = signed instanceof Uint8Array ? signed : signed.signature;
  const { default: bs58 } = await import("bs58");
  return unwrap(api.PUT("/api/v1/provider/payout-wallet", { body: { address, nonce, signature: bs58.encode(signature) } }));
}
