"""Secrets at rest and in transit between services: AES-256-GCM under `MFA_SECRET_KEYS`.

A sealed value is `v1.<key id>.<base64url(nonce | ciphertext+tag)>`; the key id lets old
values decrypt after the newest key changed, and `needs_rotation` tells which to re-seal.
`aad` binds a value to its context (an account id, a purpose) so it cannot be moved.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM


class CryptoError(ValueError):
    """A sealed value is malformed, names an unknown key or fails authentication."""


class Keyring:
    """The configured keys; the last one seals, any of them opens."""

    def __init__(self, keys: tuple[tuple[str, bytes], ...]) -> None:
        if not keys:
            raise ValueError("at least one key")
        self._keys = dict(keys)
        # One cipher object per key, made once: it holds no per-message state (the nonce is explicit).
        self._ciphers = {kid: AESGCM(key) for kid, key in self._keys.items()}
        self.current_id = keys[-1][0]

    def seal(self, plaintext: bytes, aad: bytes | str = b"") -> str:
        """Encrypt under the newest key, bound to `aad` (see `common.sealing` for the contexts)."""
        aad = aad.encode() if isinstance(aad, str) else aad
        nonce = os.urandom(12)
        ct = self._ciphers[self.current_id].encrypt(nonce, plaintext, aad)
        return f"v1.{self.current_id}.{base64.urlsafe_b64encode(nonce + ct).decode().rstrip('=')}"

    def open(self, sealed: str, aad: bytes | str = b"") -> bytes:
        """Decrypt a sealed value under whichever key sealed it; CryptoError unless `aad` matches."""
        aad = aad.encode() if isinstance(aad, str) else aad
        try:
            version, key_id, b64 = sealed.split(".", 2)
        except ValueError as exc:
            raise CryptoError("malformed sealed value") from exc
        if version != "v1":
            raise CryptoError(f"unknown sealed format {version!r}")
        cipher = self._ciphers.get(key_id)
        if cipher is None:
            raise CryptoError(f"unknown key id {key_id!r}")
        try:
            raw = base64.urlsafe_b64decode(b64 + "=" * (-len(b64) % 4))
            return cipher.decrypt(raw[:12], raw[12:], aad)
        except (InvalidTag, ValueError) as exc:
            raise CryptoError("sealed value does not authenticate") from exc

    def needs_rotation(self, sealed: str) -> bool:
        return sealed.split(".", 2)[1:2] != [self.current_id]

    def derive(self, purpose: str) -> bytes:
        """A sub-key for `purpose` (HMAC of the OLDEST key, so it survives rotation)."""
        first = next(iter(self._keys.values()))
        return hmac.new(first, f"mfa:{purpose}".encode(), hashlib.sha256).digest()


def keyed_hash(key: bytes, value: str) -> bytes:
    """HMAC-SHA256 of `value`: how codes and tokens are stored, looked up in O(1)."""
    return hmac.new(key, value.encode(), hashlib.sha256).digest()
