"""Encryption at rest for secrets users hand us (HF tokens), with Fernet (AES + HMAC).

The key comes from settings (`MODELHOST_SECRET_KEY`) or is generated once into
`<data_dir>/secret.key` with mode 0600. It never goes into the database.
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken


class SecretBox:
    def __init__(self, key: bytes) -> None:
        self._fernet = Fernet(key)

    @classmethod
    def from_settings(cls, key: str | None, data_dir: Path) -> SecretBox:
        if key:
            return cls(key.encode())
        path = data_dir / "secret.key"
        if path.exists():
            return cls(path.read_bytes().strip())
        data_dir.mkdir(parents=True, exist_ok=True)
        new = Fernet.generate_key()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(new)
        return cls(new)

    def encrypt(self, plaintext: str) -> bytes:
        return self._fernet.encrypt(plaintext.encode())

    def decrypt(self, ciphertext: bytes) -> str | None:
        """None when the key changed since encryption (the secret is unrecoverable)."""
        try:
            return self._fernet.decrypt(ciphertext).decode()
        except InvalidToken:
            return None
