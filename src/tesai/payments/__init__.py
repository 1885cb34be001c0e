"""Solana USDC deposits and provider payouts."""
