"""Building blocks with no domain knowledge: time, ids, cache, secrets."""
