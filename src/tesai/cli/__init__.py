"""The `tesai` command line."""
