"""Customers' Ray clusters: quotes, gang placement, lifecycle, jobs, self-healing."""
