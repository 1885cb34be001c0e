"""Stored notifications for customers and providers (spend warnings, clusters stopped)."""
