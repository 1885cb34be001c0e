// @vitest-environment node
// (web3.js hashing under jsdom trips over Uint8Arrays from two realms.)
import { Keypair, PublicKey, Transaction } from "@solana/web3.js";
import { ASSOCIATED_TOKEN_PROGRAM_ID, TOKEN_PROGRAM_ID, associatedTokenAddress, depositTransaction, transferCheckedInstruction } from "./transfer";

const USDC = "EPjFWdd5AufqSSqeM2qN1xzybapC8G4wEGGkZwyTDt1v";

describe("deposit transaction", () => {
  it("derives the associated token account as the ATA program does", () => {
    // Derived independently with solders (Pubkey.find_program_address).
    const owner = new PublicKey("9WzDXwBbmkg8ZTbNMqUxvQRAyrZzDsGYdLVL9zYtAWWM");
    expect(associatedTokenAddress(owner, new PublicKey(USDC)).toBase58()).toBe("FGETo8T8wMcN2wCjav8VK6eh3dLk63evNDPxzLSJra8B");
    expect(ASSOCIATED_TOKEN_PROGRAM_ID.toBase58()).toBe("ATokenGPvbdGVxr1b2hvZbsiqW5xWH25efTNsLJA8knL");
  });

  it("is one TransferChecked to the recipient account carrying the reference key", () => {
    const payer = Keypair.generate().publicKey;
    const recipient = Keypair.generate().publicKey.toBase58();
    const reference = Keypair.generate().publicKey.toBase58();
    const blockhash = Keypair.generate().publicKey.toBase58();
    const tx = depositTransaction({ payer, recipient, mint: USDC, reference, amountMicro: 12_500_000, decimals: 6, blockhash, lastValidBlockHeight: 99 });
    // What the wallet receives: decode the serialized, unsigned transaction.
    const decoded = Transaction.from(tx.serialize({ requireAllSignatures: false, verifySignatures: false }));
    expect(decoded.feePayer?.toBase58()).toBe(payer.toBase58());
    expect(decoded.recentBlockhash).toBe(blockhash);
    expect(decoded.instructions).toHaveLength(1);
    const [ix] = decoded.instructions;
    expect(ix.programId.equals(TOKEN_PROGRAM_ID)).toBe(true);
    expect(ix.keys.map((k) => [k.pubkey.toBase58(), k.isSigner, k.isWritable])).toEqual([
      [associatedTokenAddress(payer, new PublicKey(USDC)).toBase58(), false, true],
      [USDC, false, false],
      [recipient, false, true],
      [payer.toBase58(), true, true], // the fee payer: writable in the message
      [reference, false, false],
    ]);
    expect(ix.data[0]).toBe(12); // TransferChecked
    expect(Buffer.from(ix.data).readBigUInt64LE(1)).toBe(12_500_000n);
    expect(ix.data[9]).toBe(6);
    expect(ix.data).toHaveLength(10);
  });

  it("marks the owner as a read-only signer and refuses impossible amounts", () => {
    const k = () => Keypair.generate().publicKey;
    const ix = transferCheckedInstruction({ source: k(), mint: k(), destination: k(), owner: k(), amount: 1n, decimals: 6 });
    expect(ix.keys[3]).toMatchObject({ isSigner: true, isWritable: false });
    expect(ix.keys).toHaveLength(4);
    expect(() => transferCheckedInstruction({ source: k(), mint: k(), destination: k(), owner: k(), amount: 0n, decimals: 6 })).toThrow(RangeError);
    expect(() => transferCheckedInstruction({ source: k(), mint: k(), destination: k(), owner: k(), amount: 1n << 64n, decimals: 6 })).toThrow(RangeError);
  });
});
