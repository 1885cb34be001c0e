"""Solana: one chain-client interface, an RPC implementation and an in-process LiteSVM one."""
