"""The last-known-good state on disk: the signed bundles, their revisions,
the JWKS that verified them and the keys known revoked, written atomically (temporary file, fsync,
rename) so a crash leaves the old file or the new one, never half. Read
back, every bundle is verified again before it is used. The format is the
Rust library's, so either can start from the other's cache.

Several subscriptions may share a cache directory and follow one
namespace, in one process or in several: each writes through a temporary
file of its own (`tempfile.mkstemp`, a random name created only if no file
has it), so that one writer never truncates or renames away another's.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
from pathlib import Path

from .bundle import Jwks, key_id, verify_bundle
from .errors import PolicyhubError, VerifyError
from .state import Source, State, VerifiedBundle

FORMAT = 1


class CacheError(PolicyhubError):
    """The cache cannot be trusted (why)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, kind="cache")


class Cache:
    """The cache of one subscription: `<namespace>.state.json` in its
    directory, with the tree of the server's log verified last beside it."""

    def __init__(self, directory: str | Path, namespace: str, names: list[str]) -> None:
        self.path = Path(directory) / f"{namespace}.state.json"
        self._namespace = namespace
        self._names = names

    def _beside(self, suffix: str) -> Path:
        return self.path.with_suffix(suffix)

    def load_tree(self) -> str | None:
        """The last verified checkpoint note of the server's tree, if any."""
        return _read_if_any(self._beside(".tree"))

    def save_tree(self, note: str) -> None:
        """Keeps `note` as the last verified checkpoint note."""
        _write_atomically(self._beside(".tree"), note.encode())

    def load_restore(self) -> int | None:
        """The leaf of the last restore of the server's log taken, if any."""
        text = _read_if_any(self._beside(".restore"))
        return int(text.strip()) if text is not None else None

    def save_restore(self, leaf: int) -> None:
        """Keeps `leaf` as the last restore taken."""
        _write_atomically(self._beside(".restore"), str(leaf).encode())

    def load(self) -> tuple[State, Jwks, frozenset[str]] | None:
        """The cached state, its JWKS and the keys known revoked, verified
        again; `None` when there is no cache yet, `CacheError` when it cannot
        be trusted (a bundle signed by a revoked key among them)."""
        try:
            text = self.path.read_bytes()
            modified = self.path.stat().st_mtime
        except FileNotFoundError:
            return None
        except OSError as error:
            raise CacheError(f"cannot read it: {error}") from error
        try:
            file = json.loads(text)
            if file["format"] != FORMAT:
                raise CacheError(f"its format {file['format']} is not {FORMAT}")
            if file["namespace"] != self._namespace or file["names"] != self._names:
                raise CacheError(
                    f"it holds namespace {file['namespace']} {file['names']}, "
                    f"not {self._namespace} {self._names}"
                )
            jwks = Jwks.from_json(file["jwks"])
            # Absent from the files of earlier versions.
            revoked = frozenset(str(kid) for kid in file.get("revoked_key_ids", []))
            bundles: dict[str, VerifiedBundle] = {}
            for cached in file["bundles"]:
                kid = key_id(cached["jws"])
                if kid in revoked:
                    raise CacheError(f"a bundle is signed by revoked key {json.dumps(kid)}")
                claims = verify_bundle(cached["jws"], jwks)
                prefix = f"{self._namespace}/"
                if not claims.sub.startswith(prefix):
                    raise CacheError(f"a bundle of {claims.sub} is in it")
                name = claims.sub[len(prefix) :]
                bundles[name] = VerifiedBundle(
                    name=name,
                    version=claims.ver,
                    label=claims.label,
                    digest=claims.digest,
                    revision=int(cached["revision"]),
                    key_id=kid,
                    body=claims.body,
                    jws=cached["jws"],
                )
            verified_ms = file.get("verified_at_unix_ms")
            state = State(
                namespace=self._namespace,
                revision=int(file["revision"]),
                bundles=bundles,
                source=Source.CACHE,
                verified_at=verified_ms / 1000 if isinstance(verified_ms, int) else modified,
            )
        except VerifyError as error:
            raise CacheError(f"a bundle does not verify: {error}") from error
        except (ValueError, KeyError, TypeError) as error:
            raise CacheError(f"it is not a cache: {error!r}") from error
        return state, jwks, revoked

    def save(self, state: State, jwks: Jwks, revoked: frozenset[str] = frozenset()) -> None:
        """Replaces the cache with `state`, its JWKS and the keys known
        revoked (a bundle they signed is refused when the file is read back),
        atomically."""
        file: dict[str, object] = {
            "format": FORMAT,
            "namespace": self._namespace,
            "names": self._names,
            "revision": state.revision,
            "jwks": jwks.to_json(),
            **({"revoked_key_ids": sorted(revoked)} if revoked else {}),
            "bundles": [
                {"jws": bundle.jws, "revision": bundle.revision}
                for bundle in state.bundles.values()
            ],
            "verified_at_unix_ms": int((state.verified_at or time.time()) * 1000),
        }
        _write_atomically(self.path, json.dumps(file).encode())


def _write_atomically(path: Path, contents: bytes) -> None:
    """Replaces `path` with `contents`: a temporary file of its own beside
    it, fsync, rename; the temporary file is removed when a step fails."""
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f"{path.name}.", suffix=".tmp")
    try:
        with open(descriptor, "wb") as writer:
            writer.write(contents)
            writer.flush()
            os.fsync(writer.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def _read_if_any(path: Path) -> str | None:
    try:
        return path.read_text()
    except FileNotFoundError:
        return None
