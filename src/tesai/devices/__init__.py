"""Devices: the provider machines of the pool, their credentials, liveness and proof of compute."""
