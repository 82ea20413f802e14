"""The signed bundle format: JWK(S), canonical JSON and digests, and the
offline verification of bundles and checkpoints.

A bundle is a JWS compact serialization whose payload carries the whole
policy, so it verifies with nothing but the JWKS::

    header  {"alg":"EdDSA","kid":"<RFC 7638 thumbprint>","typ":"policyhub-bundle+jwt"}
    payload {"iss","sub":"namespace/name","ver","label","digest","body","iat"}

A checkpoint is the same kind of JWS, of type `policyhub-checkpoint+jwt`,
stating the revision in force and the head of the server's event log.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import json
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import rfc8785
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from .errors import VerifyError as VerifyError

BUNDLE_TYPE = "policyhub-bundle+jwt"
"""The JWS `typ` header of every bundle."""

CHECKPOINT_TYPE = "policyhub-checkpoint+jwt"
"""The JWS `typ` header of every checkpoint."""


@dataclass(frozen=True)
class Jwk:
    """An Ed25519 public key as an RFC 7517 JSON Web Key."""

    kty: str
    crv: str
    x: str
    """The 32-byte public key, base64url without padding."""
    kid: str
    """Its RFC 7638 thumbprint."""
    alg: str = "EdDSA"
    use: str = "sig"

    def public_key(self) -> Ed25519PublicKey:
        """The key itself; `VerifyError` when it is not an Ed25519 key."""
        if self.kty != "OKP" or self.crv != "Ed25519":
            raise VerifyError(f"key {self.kid!r} is not an Ed25519 key")
        try:
            return _ed25519_key(self.x)
        except ValueError as error:
            raise VerifyError(f"key {self.kid!r}: {error}") from error


@functools.lru_cache(maxsize=64)
def _ed25519_key(x: str) -> Ed25519PublicKey:
    """The Ed25519 public key of a JWK's `x`, imported once for every
    signature it checks (a key that does not import raises, and is not
    kept)."""
    return Ed25519PublicKey.from_public_bytes(b64url_decode(x))


@dataclass(frozen=True)
class Jwks:
    """A JWK Set: the keys that verify bundles, fetched from the server."""

    keys: tuple[Jwk, ...] = ()

    def knows(self, kid: str) -> bool:
        """Whether a key with this id is in the set."""
        return any(key.kid == kid for key in self.keys)

    def find(self, kid: str) -> Jwk | None:
        """The Ed25519 key with this id, if the set holds one."""
        for key in self.keys:
            if key.kid == kid and key.kty == "OKP" and key.crv == "Ed25519":
                return key
        return None

    def to_json(self) -> dict[str, Any]:
        """The set as RFC 7517 JSON."""
        return {
            "keys": [
                {"kty": k.kty, "crv": k.crv, "x": k.x, "kid": k.kid, "alg": k.alg, "use": k.use}
                for k in self.keys
            ]
        }

    @staticmethod
    def from_json(value: Any) -> Jwks:
        """A set from RFC 7517 JSON; `VerifyError` when it is not one."""
        try:
            keys = tuple(
                Jwk(
                    kty=str(k["kty"]),
                    crv=str(k["crv"]),
                    x=str(k["x"]),
                    kid=str(k["kid"]),
                    alg=str(k.get("alg", "EdDSA")),
                    use=str(k.get("use", "sig")),
                )
                for k in value["keys"]
            )
        except (KeyError, TypeError) as error:
            raise VerifyError(f"not a JWK set: {error}") from error
        return Jwks(keys)


def b64url_decode(text: str) -> bytes:
    """Base64url without padding, as JOSE writes it."""
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def canonical_json(value: Any) -> bytes:
    """RFC 8785 canonical JSON of a JSON value: the bytes a digest covers."""
    return rfc8785.dumps(value)


def digest_of(value: Any) -> str:
    """`sha256:` and the lowercase hex SHA-256 of the value's canonical JSON."""
    return "sha256:" + hashlib.sha256(canonical_json(value)).hexdigest()


def thumbprint(x: str) -> str:
    """The RFC 7638 thumbprint of an Ed25519 key given as its `x`."""
    required = canonical_json({"crv": "Ed25519", "kty": "OKP", "x": x})
    return base64.urlsafe_b64encode(hashlib.sha256(required).digest()).rstrip(b"=").decode()


_BASE64URL = re.compile(r"[A-Za-z0-9_-]*")
"""A segment of a compact JWS: base64url without padding."""


def _segment(text: str, what: str) -> bytes:
    """A base64url segment of a compact JWS, decoded; `ValueError` when it
    is not one."""
    if _BASE64URL.fullmatch(text) is None:
        raise ValueError(f"its {what} is not base64url")
    try:
        return b64url_decode(text)
    except binascii.Error as error:
        raise ValueError(f"its {what} is not base64url: {error}") from error


def _split(jws: str) -> tuple[str, str, str, dict[str, Any]]:
    """A compact JWS's three segments and its header, read (nothing
    verified); `VerifyError` when it is not one."""
    parts = jws.split(".")
    if len(parts) != 3:
        raise VerifyError("not a signed document: not three segments")
    try:
        header = json.loads(_segment(parts[0], "header"))
    except ValueError as error:
        raise VerifyError(f"not a signed document: {error}") from error
    if not isinstance(header, dict):
        raise VerifyError("not a signed document: its header is not a JSON object")
    return parts[0], parts[1], parts[2], header


def key_id(jws: str) -> str:
    """The key id a JWS's header names, without verifying anything."""
    kid = _split(jws)[3].get("kid")
    if not isinstance(kid, str) or not kid:
        raise VerifyError("signed by an unnamed key")
    return kid


def verify_signature(jws: str, typ: str, jwks: Jwks) -> dict[str, Any]:
    """Checks a JWS of this format offline: its `typ` is `typ`, its algorithm
    EdDSA, its key one of `jwks`, its signature good; its claims. A header
    that names critical extensions (RFC 7515, 4.1.11), which policyhub never
    writes, is refused."""
    encoded_header, encoded_payload, encoded_signature, header = _split(jws)
    if header.get("alg") != "EdDSA":
        raise VerifyError(f"signature check failed: algorithm {header.get('alg')!r} is not EdDSA")
    if header.get("typ") != typ:
        raise VerifyError(f"signature check failed: type {header.get('typ')!r} is not {typ}")
    kid = header.get("kid")
    jwk = jwks.find(kid) if isinstance(kid, str) else None
    if jwk is None:
        raise VerifyError(f"signed by unknown key {kid!r}")
    if "crit" in header:
        raise VerifyError(
            f"signature check failed: critical extensions {header['crit']!r} are not understood"
        )
    try:
        signature = _segment(encoded_signature, "signature")
        payload = _segment(encoded_payload, "payload")
    except ValueError as error:
        raise VerifyError(f"signature check failed: {error}") from error
    try:
        jwk.public_key().verify(signature, f"{encoded_header}.{encoded_payload}".encode("ascii"))
    except InvalidSignature as error:
        raise VerifyError("signature check failed: Signature verification failed") from error
    try:
        claims = json.loads(payload)
    except ValueError as error:
        raise VerifyError(f"signature check failed: {error}") from error
    if not isinstance(claims, dict):
        raise VerifyError("the signed payload is not a JSON object")
    return claims


@dataclass(frozen=True)
class BundleClaims:
    """What a verified bundle states."""

    sub: str
    """`namespace/name` of the policy."""
    ver: int
    label: str | None
    digest: str
    body: dict[str, Any]
    iat: int


def verify_bundle(jws: str, jwks: Jwks) -> BundleClaims:
    """Verifies a bundle offline: type, algorithm, key, signature, and that
    the digest claim matches the body."""
    claims = verify_signature(jws, BUNDLE_TYPE, jwks)
    body = claims.get("body")
    if not isinstance(body, dict):
        raise VerifyError("not a signed bundle: the body is not a JSON object")
    sub, ver, digest = claims.get("sub"), claims.get("ver"), claims.get("digest")
    if not isinstance(sub, str) or not isinstance(ver, int) or not isinstance(digest, str):
        raise VerifyError("not a signed bundle: sub, ver or digest missing or mistyped")
    try:
        actual = digest_of(body)
    except (rfc8785.CanonicalizationError, ValueError) as error:
        raise VerifyError(f"the body has no canonical form: {error}") from error
    if actual != digest:
        raise VerifyError(f"digest {digest} does not match the body, whose digest is {actual}")
    label = claims.get("label")
    iat = claims.get("iat", 0)
    return BundleClaims(
        sub=sub,
        ver=ver,
        label=label if isinstance(label, str) else None,
        digest=digest,
        body=body,
        iat=iat if isinstance(iat, int) else 0,
    )


def verify_envelope(
    jws: str, *, namespace: str, name: str, version: int, digest: str, jwks: Jwks
) -> BundleClaims:
    """Verifies a bundle, and that its signed payload is the policy, version
    and body its envelope names: a valid bundle of another policy, or an old
    version replayed under a new envelope, is refused."""
    claims = verify_bundle(jws, jwks)
    expected = f"{namespace}/{name}"
    if claims.sub != expected:
        raise VerifyError(f"the bundle for {expected} is signed for {claims.sub}")
    if claims.ver != version or claims.digest != digest:
        raise VerifyError(
            f"the envelope says version {version} {digest}, "
            f"the signed payload version {claims.ver} {claims.digest}"
        )
    return claims


@dataclass(frozen=True)
class CheckpointClaims:
    """What a signed checkpoint states."""

    revision: int
    last_event_id: int
    chain_head: str
    time: str
    signed_at: datetime


def parse_time(text: str) -> datetime:
    """An RFC 3339 UTC time as the server writes it."""
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as error:
        raise VerifyError(f"time {text!r}: {error}") from error
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return parsed


def verify_checkpoint(jws: str, jwks: Jwks) -> CheckpointClaims:
    """Verifies a checkpoint offline: type, algorithm, key, signature, and a
    readable time."""
    claims = verify_signature(jws, CHECKPOINT_TYPE, jwks)
    time = claims.get("time")
    if not isinstance(time, str):
        raise VerifyError("a checkpoint without a time")
    return CheckpointClaims(
        revision=int(claims.get("revision", 0)),
        last_event_id=int(claims.get("lastEventId", 0)),
        chain_head=str(claims.get("chainHead", "")),
        time=time,
        signed_at=parse_time(time),
    )
