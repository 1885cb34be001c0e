/**
 * The USDC deposit transaction a wallet signs: a Solana Pay transfer built by hand.
 *
 * One SPL Token `TransferChecked` from the payer's associated token account to the deposit's
 * recipient token account (the server watches that account, see tesai.payments.rules), with
 * the deposit's reference key appended as a read-only, non-signer account: the server finds
 * the payment by listing that key's signatures. No @solana/spl-token: one instruction does not
 * need it.
 */
import { PublicKey, Transaction, TransactionInstruction } from "@solana/web3.js";
import { Buffer } from "buffer";

export const TOKEN_PROGRAM_ID = new PublicKey("TokenkegQfeZyiNwAJbNbGKPFXCWuBvf9Ss623VQ5DA");
export const ASSOCIATED_TOKEN_PROGRAM_ID = new PublicKey("ATokenGPvbdGVxr1b2hvZbsiqW5xWH25efTNsLJA8knL");

/** SPL Token instruction index of TransferChecked. */
export const TRANSFER_CHECKED = 12;

/** The associated token account of `owner` for `mint` (classic token program). */
export function associatedTokenAddress(owner: PublicKey, mint: PublicKey): PublicKey {
  return PublicKey.findProgramAddressSync([owner.toBuffer(), TOKEN_PROGRAM_ID.toBuffer(), mint.toBuffer()], ASSOCIATED_TOKEN_PROGRAM_ID)[0];
}

export interface TransferChecked {
  source: PublicKey;
  mint: PublicKey;
  destination: PublicKey;
  owner: PublicKey;
  /** Base units of the token (micro-USDC for USDC). */
  amount: bigint;
  decimals: number;
  /** Solana Pay reference keys: read-only, non-signer accounts after the token accounts. */
  references?: PublicKey[];
}

export function transferCheckedInstruction(t: TransferChecked): TransactionInstruction {
  if (t.amount <= 0n || t.amount >= 1n << 64n) throw new RangeError("amount out of range");
  const data = Buffer.alloc(10);
  data.writeUInt8(TRANSFER_CHECKED, 0);
  data.writeBigUInt64LE(t.amount, 1);
  data.writeUInt8(t.decimals, 9);
  return new TransactionInstruction({
    programId: TOKEN_PROGRAM_ID,
    keys: [
      { pubkey: t.source, isSigner: false, isWritable: true },
      { pubkey: t.mint, isSigner: false, isWritable: false },
      { pubkey: t.destination, isSigner: false, isWritable: true },
      { pubkey: t.owner, isSigner: true, isWritable: false },
      ...(t.references ?? []).map((pubkey) => ({ pubkey, isSigner: false, isWritable: false })),
    ],
    data,
  });
}

export interface DepositPayment {
  payer: PublicKey;
  /** The deposit's recipient: the treasury's token account itself (not its owner). */
  recipient: string;
  mint: string;
  reference: string;
  amountMicro: number;
  decimals: number;
  blockhash: string;
  lastValidBlockHeight: number;
}

/** The unsigned transaction paying a deposit, fee paid by the payer. */
export function depositTransaction(p: DepositPayment): Transaction {
  const mint = new PublicKey(p.mint);
  const tx = new Transaction({ feePayer: p.payer, blockhash: p.blockhash, lastValidBlockHeight: p.lastValidBlockHeight });
  tx.add(
    transferCheckedInstruction({
      source: associatedTokenAddress(p.payer, mint),
      mint,
      destination: new PublicKey(p.recipient),
      owner: p.payer,
      amount: BigInt(p.amountMicro),
      decimals: p.decimals,
      references: [new PublicKey(p.reference)],
    }),
  );
  return tx;
}
