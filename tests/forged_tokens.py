"""Tokens no JWT library would make: correctly signed HS256 over raw JSON of our choosing
(NaN, Infinity, 400-digit numbers), for the unit and the integration tests alike."""

from __future__ import annotations

import base64
import hashlib
import hmac


def signed(payload: bytes, secret: str) -> str:
    def enc(raw: bytes) -> bytes:
        return base64.urlsafe_b64encode(raw).rstrip(b"=")

    signing_input = enc(b'{"alg":"HS256","typ":"JWT"}') + b"." + enc(payload)
    signature = enc(hmac.new(secret.encode(), signing_input, hashlib.sha256).digest())
    return (signing_input + b"." + signature).decode()
