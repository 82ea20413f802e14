"""The server's log as a Merkle tree, as a runtime remembers it.

The server signs each checkpoint of its log's tree as a C2SP
tlog-checkpoint in a C2SP signed note, under the log's origin, with a key
of the JWKS. A runtime remembers the last one it verified and accepts a
newer tree only with an RFC 9162 consistency proof from it; a smaller
tree, another tree of the same size, or a tree the proof does not tie to
the remembered one is a history wound back or forked: refused, unless the
server proves that its tree records a restore an operator declared (a
RESTORED event) after any restore taken before.

Witnesses cosign checkpoints (C2SP tlog-cosignature, `cosignature/v1`): a
runtime may require K of N of them before it takes a checkpoint.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import struct
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from .bundle import Jwks
from .errors import HistoryError as HistoryError
from .errors import VerifyError

_ED25519 = 0x01
_COSIGNATURE_V1 = 0x04
_SIGNATURE_PREFIX = "\u2014 "


def leaf_hash(data: bytes) -> bytes:
    """RFC 9162 leaf hash: SHA-256(0x00 || data)."""
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """RFC 9162 interior node hash: SHA-256(0x01 || left || right)."""
    return hashlib.sha256(b"\x01" + left + right).digest()


def verify_consistency(
    old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: list[bytes]
) -> bool:
    """Whether `proof` shows that the tree of `new_size` extends the one of
    `old_size` (RFC 9162, 2.1.4.2)."""
    if old_size > new_size or old_size == 0:
        return False
    if old_size == new_size:
        return not proof and old_root == new_root
    if old_size & (old_size - 1) == 0:
        proof = [old_root, *proof]
    if not proof:
        return False
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn, sn = fn >> 1, sn >> 1
    fr = sr = proof[0]
    for c in proof[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr, sr = node_hash(c, fr), node_hash(c, sr)
            if not fn & 1:
                while not (fn & 1 or fn == 0):
                    fn, sn = fn >> 1, sn >> 1
        else:
            sr = node_hash(sr, c)
        fn, sn = fn >> 1, sn >> 1
    return sn == 0 and fr == old_root and sr == new_root


def verify_inclusion(
    leaf_index: int, tree_size: int, leaf: bytes, root: bytes, proof: list[bytes]
) -> bool:
    """Whether `proof` shows the leaf hash `leaf` at `leaf_index` in the tree
    of `tree_size` whose root is `root` (RFC 9162, 2.1.3.2)."""
    if leaf_index >= tree_size:
        return False
    fn, sn, r = leaf_index, tree_size - 1, leaf
    for p in proof:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while not (fn & 1 or fn == 0):
                    fn, sn = fn >> 1, sn >> 1
        else:
            r = node_hash(r, p)
        fn, sn = fn >> 1, sn >> 1
    return sn == 0 and r == root


@dataclass(frozen=True)
class NoteSignature:
    """One signature line of a signed note."""

    name: str
    key_id: int
    signature: bytes


@dataclass(frozen=True)
class Note:
    """A C2SP signed note: its text (ending in a newline) and signatures."""

    text: bytes
    signatures: tuple[NoteSignature, ...]

    @staticmethod
    def parse(note: str) -> Note:
        """Parses a signed note; `VerifyError` when it is not one."""
        raw = note.encode()
        split = raw.rfind(b"\n\n")
        if split < 0 or not raw.endswith(b"\n"):
            raise VerifyError("not a signed note: no signature block")
        text, block = raw[: split + 1], raw[split + 2 :]
        signatures = []
        for line in block.decode(errors="replace").splitlines():
            if not line.startswith(_SIGNATURE_PREFIX):
                raise VerifyError(f"not a signed note: a malformed signature line {line!r}")
            try:
                name, encoded = line[len(_SIGNATURE_PREFIX) :].split(" ")
                blob = base64.b64decode(encoded, validate=True)
            except ValueError as error:
                raise VerifyError(f"not a signed note: {error}") from error
            if len(blob) < 5:
                raise VerifyError("not a signed note: a signature too short")
            (key_id,) = struct.unpack(">I", blob[:4])
            signatures.append(NoteSignature(name, key_id, blob[4:]))
        if not signatures:
            raise VerifyError("not a signed note: no signature")
        return Note(text, tuple(signatures))


@functools.lru_cache(maxsize=64)
def note_key_id(name: str, key: bytes) -> int:
    """A signed-note key id: the first four bytes of SHA-256(name \\n key)."""
    (key_id,) = struct.unpack(">I", hashlib.sha256(name.encode() + b"\n" + key).digest()[:4])
    return int(key_id)


@dataclass(frozen=True)
class TreeHead:
    """A verified checkpoint of the server's tree."""

    origin: str
    """The origin line: which log."""
    size: int
    """How many events the tree holds."""
    root: bytes
    """Its RFC 9162 root hash."""
    note: str
    """The signed note itself, for the cache."""


def verify_note(note: str, origin: str | None, jwks: Jwks) -> TreeHead:
    """Verifies a checkpoint note: signed under its origin (which must be
    `origin` when one is pinned) by a key of `jwks`."""
    parsed = Note.parse(note)
    lines = parsed.text.decode(errors="replace").split("\n")
    try:
        body_origin, size, root = lines[0], int(lines[1]), base64.b64decode(lines[2], validate=True)
    except (IndexError, ValueError) as error:
        raise VerifyError(f"not a checkpoint of a tree: {error}") from error
    if not body_origin or size < 0 or len(root) != 32:
        raise VerifyError("not a checkpoint of a tree")
    if origin is not None and body_origin != origin:
        raise VerifyError(f"the checkpoint is of the log {body_origin!r}, not of {origin!r}")
    verified = False
    for key in jwks.keys:
        try:
            public = key.public_key()
        except VerifyError:
            continue
        raw = public.public_bytes_raw()
        key_id = note_key_id(body_origin, bytes([_ED25519]) + raw)
        for signature in parsed.signatures:
            if signature.name != body_origin or signature.key_id != key_id:
                continue
            try:
                public.verify(signature.signature, parsed.text)
            except InvalidSignature as error:
                raise VerifyError("the checkpoint note does not verify: a bad signature") from error
            verified = True
    if not verified:
        raise VerifyError("the checkpoint note does not verify: no signature of a known key")
    return TreeHead(body_origin, size, root, note)


@dataclass(frozen=True)
class CosignatureVerifier:
    """A witness's verifier key, `<name>+<key id>+base64(0x04 || key)`."""

    name: str
    key_id: int
    key: Ed25519PublicKey

    @staticmethod
    def parse(vkey: str) -> CosignatureVerifier:
        """Parses a verifier key; `VerifyError` when it is not a
        cosignature/v1 one."""
        malformed = VerifyError(f"{vkey!r} is not a cosignature/v1 verifier key")
        parts = vkey.split("+", 2)
        if len(parts) != 3:
            raise malformed
        name, hex_id, encoded = parts
        try:
            key_id = int(hex_id, 16)
            raw = base64.b64decode(encoded, validate=True)
        except ValueError as error:
            raise malformed from error
        if len(hex_id) != 8 or len(raw) != 33 or raw[0] != _COSIGNATURE_V1:
            raise malformed
        if note_key_id(name, raw) != key_id:
            raise malformed
        return CosignatureVerifier(name, key_id, Ed25519PublicKey.from_public_bytes(raw[1:]))

    def verify(self, text: bytes, signature: bytes) -> bool:
        """Whether `signature` (8-byte time, then Ed25519) cosigns `text`."""
        if len(signature) != 72:
            return False
        time = int.from_bytes(signature[:8], "big")
        message = f"cosignature/v1\ntime {time}\n".encode() + text
        try:
            self.key.verify(signature[8:], message)
        except InvalidSignature:
            return False
        return time != 0


def cosigned_by(note: str, witnesses: list[str]) -> list[str]:
    """The names of the witnesses among `witnesses` (verifier keys) whose
    cosignature on `note` verifies. A cosignature that names a witness's key
    but does not verify is a `VerifyError`."""
    parsed = Note.parse(note)
    verifiers = [CosignatureVerifier.parse(vkey) for vkey in witnesses]
    names: list[str] = []
    for verifier in verifiers:
        for signature in parsed.signatures:
            if signature.name != verifier.name or signature.key_id != verifier.key_id:
                continue
            if not verifier.verify(parsed.text, signature.signature):
                raise VerifyError(f"a witness's cosignature does not verify: {verifier.name}")
            if verifier.name not in names:
                names.append(verifier.name)
    return names


@dataclass(frozen=True)
class RestoreProof:
    """The proof that a tree records a restore: the RESTORED event's
    canonical form, its leaf, and its inclusion proof in the tree."""

    canonical: str
    leaf_index: int
    tree_size: int
    hashes: list[bytes]


@dataclass(frozen=True)
class Same:
    """The tree held."""


@dataclass(frozen=True)
class ProveFrom:
    """A larger tree: to accept with a consistency proof from `size`."""

    size: int


@dataclass(frozen=True)
class Diverges:
    """A tree that cannot extend the one held, and why."""

    reason: str


@dataclass
class Remembered:
    """The tree a runtime verified last."""

    origin: str | None = None
    """The log followed: pinned, or the first one verified."""
    head: TreeHead | None = None
    witnesses: list[str] = field(default_factory=list)
    """The witnesses' verifier keys."""
    cosignatures: int = 0
    """How many of them must have cosigned a checkpoint before it is taken."""
    restored_through: int | None = None
    """The leaf of the last restore taken: an older one is not taken again."""

    def judge(self, offered: TreeHead) -> Same | ProveFrom | Diverges:
        """Whether `offered` may follow the remembered tree, and with which
        proof; `HistoryError` when it may not at all."""
        if self.cosignatures > 0:
            try:
                cosigned = cosigned_by(offered.note, self.witnesses)
            except VerifyError as error:
                raise HistoryError(str(error)) from error
            if len(cosigned) < self.cosignatures:
                raise HistoryError(
                    f"the server's checkpoint of {offered.size} events carries {len(cosigned)} "
                    f"of the {self.cosignatures} witnesses' cosignatures this runtime requires"
                )
        held = self.head
        if held is None:
            return ProveFrom(0)
        if offered.origin != held.origin:
            raise HistoryError(
                f"the server's checkpoint is of the log {offered.origin!r}, "
                f"this runtime follows {held.origin!r}"
            )
        if offered.size < held.size:
            return Diverges(
                f"the server's log of {offered.size} events is smaller than the {held.size} "
                "this runtime verified: its history was wound back"
            )
        if offered.size == held.size:
            if offered.root == held.root:
                return Same()
            return Diverges(
                f"the server's log of {offered.size} events is not the one of {held.size} "
                "events this runtime verified: a forked history"
            )
        return ProveFrom(held.size)

    def extend(self, offered: TreeHead, proof: list[bytes]) -> None:
        """Takes `offered` when `proof` shows it extends the remembered tree;
        `HistoryError` otherwise."""
        held = self.head
        if held is not None and not verify_consistency(
            held.size, offered.size, held.root, offered.root, proof
        ):
            raise HistoryError(
                f"the server's log of {offered.size} events does not extend the one of "
                f"{held.size} events this runtime verified: a forked history"
            )
        self.origin = offered.origin
        self.head = offered

    def restore(self, offered: TreeHead, proof: RestoreProof) -> str:
        """Takes `offered`, a tree that does not extend the remembered one,
        when `proof` shows it records a restore newer than any taken
        before; the operator's reason. `HistoryError` otherwise."""
        if proof.tree_size != offered.size:
            raise HistoryError(
                f"the restore is proven in a tree of {proof.tree_size} events, "
                f"not the {offered.size} offered"
            )
        if self.restored_through is not None and proof.leaf_index <= self.restored_through:
            raise HistoryError(
                f"the restore it records (leaf {proof.leaf_index}) is not newer than "
                "the one taken before"
            )
        try:
            event = json.loads(proof.canonical)
        except ValueError as error:
            raise HistoryError(f"the restore's event is not JSON: {error}") from error
        if not isinstance(event, dict) or event.get("kind") != "RESTORED":
            raise HistoryError("the event proven is not a restore")
        leaf = leaf_hash(proof.canonical.encode())
        if not verify_inclusion(proof.leaf_index, offered.size, leaf, offered.root, proof.hashes):
            raise HistoryError("the restore's inclusion proof does not verify")
        self.restored_through = proof.leaf_index
        self.origin = offered.origin
        self.head = offered
        reason = event.get("reason")
        return reason if isinstance(reason, str) else ""
