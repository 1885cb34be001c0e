"""Sealing secrets the control plane must read back (e.g. a cluster's Ray token).

Credentials that are only ever compared are stored as SHA-256 hashes instead. A sealed value
is AES-256-GCM with a random nonce under a key kept in a file (0600), generated on first use.
"""

from __future__ import annotations

import base64
import os
import secrets
from functools import lru_cache
from pathlib import Path

from cryptography.hazmat.primitives.ciphers.aead import AESGCM


class SecretBox:
    def __init__(self, key: bytes) -> None:
        if len(key) != 32:
            raise ValueError("a secret box key is 32 bytes")
        self._aead = AESGCM(key)

    @classmethod
    def from_file(cls, path: Path) -> SecretBox:
        """Load the key at ``path``, creating it (mode 0600) if absent."""
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(secrets.token_bytes(32))
        return cls(path.read_bytes())

    def seal(self, plaintext: str) -> str:
        nonce = secrets.token_bytes(12)
        return base64.urlsafe_b64encode(
            nonce + self._aead.encrypt(nonce, plaintext.encode(), None)
        ).decode()

    def open(self, sealed: str) -> str:
        raw = base64.urlsafe_b64decode(sealed.encode())
        return self._aead.decrypt(raw[:12], raw[12:], None).decode()


@lru_cache(maxsize=8)
def load_box(path: Path) -> SecretBox:
    """The box whose key is at ``path`` (created on first use), one per process."""
    return SecretBox.from_file(path)
