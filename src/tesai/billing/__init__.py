"""The ledger, holds, metering and statements."""
