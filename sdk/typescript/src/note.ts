/**
 * C2SP signed notes and the witness cosignatures on them.
 *
 * A note is its text (ending in a newline), a blank line, then one line per
 * signature: `— <name> base64(<4-byte key id> ‖ <signature>)`. The server
 * signs its checkpoints as Ed25519 notes (signature type 0x01) under the
 * log's origin; witnesses cosign them with C2SP `cosignature/v1` (type
 * 0x04): they sign `cosignature/v1\ntime <t>\n` followed by the text, and
 * their signature is the 8-byte big-endian `t` then the 64-byte Ed25519
 * signature. A key id is the first four bytes of SHA-256(`<name>\n` ‖ type
 * ‖ public key).
 *
 * @module
 */

import { createHash, verify as ed25519Verify, type KeyObject } from "node:crypto";

import { type Jwks, VerifyError, ed25519PublicKey } from "./bundle.js";

/** The signature type of an Ed25519 note signature. */
const ED25519 = 0x01;
/** The signature type of a timestamped Ed25519 cosignature. */
const COSIGNATURE_V1 = 0x04;

/** One signature line of a note. */
interface NoteSignature {
  name: string;
  id: number;
  signature: Buffer;
}

/** A note, split into its text and its signatures. */
export interface Note {
  /** The signed text, ending in a newline. */
  text: string;
  signatures: NoteSignature[];
}

/** Splits a signed note; throws when it is not one. */
export function parseNote(note: string): Note {
  const split = note.lastIndexOf("\n\n");
  if (split < 0 || !note.endsWith("\n")) {
    throw new VerifyError("not a signed note: no signature block");
  }
  const text = note.slice(0, split + 1);
  const lines = note.slice(split + 2, -1).split("\n");
  const signatures = lines.map((line) => {
    const match = /^\u2014 (\S+) (\S+)$/u.exec(line);
    if (match === null) {
      throw new VerifyError("not a signed note: a malformed signature line");
    }
    const signature = Buffer.from(match[2] ?? "", "base64");
    if (signature.length < 5) {
      throw new VerifyError("not a signed note: a signature too short");
    }
    return { name: match[1] ?? "", id: signature.readUInt32BE(0), signature: signature.subarray(4) };
  });
  return { text, signatures };
}

/** The key id of a public key of signature type `type` under `name`. */
export function noteKeyId(name: string, type: number, publicKey: Uint8Array): number {
  return createHash("sha256")
    .update(`${name}\n`)
    .update(Buffer.from([type]))
    .update(publicKey)
    .digest()
    .readUInt32BE(0);
}

function ed25519Key(raw: Uint8Array): KeyObject {
  return ed25519PublicKey(Buffer.from(raw).toString("base64url"));
}

/**
 * The key ids of the log's keys under each origin, by origin and key: a
 * hash computed once, not at every checkpoint. Bounded as the keys are.
 */
const logKeyIds = new Map<string, number>();
const LOG_KEY_IDS_HELD = 64;

function logKeyId(origin: string, raw: Buffer): number {
  const cacheKey = `${origin}\n${raw.toString("hex")}`;
  let id = logKeyIds.get(cacheKey);
  if (id === undefined) {
    id = noteKeyId(origin, ED25519, raw);
    if (logKeyIds.size >= LOG_KEY_IDS_HELD) {
      logKeyIds.clear();
    }
    logKeyIds.set(cacheKey, id);
  }
  return id;
}

/** Something that checks the signatures of one name and key id. */
interface NoteVerifier {
  name: string;
  id: number;
  verify(text: string, signature: Buffer): boolean;
}

/**
 * The names of the verifiers whose signatures on `note` verify; throws when
 * a signature names a verifier's key but does not verify.
 */
function verifiedBy(note: Note, verifiers: NoteVerifier[]): string[] {
  const names: string[] = [];
  for (const signature of note.signatures) {
    const verifier = verifiers.find((v) => v.name === signature.name && v.id === signature.id);
    if (verifier === undefined) {
      continue;
    }
    if (!verifier.verify(note.text, signature.signature)) {
      throw new VerifyError(`the signature of ${signature.name} does not verify`);
    }
    names.push(signature.name);
  }
  return names;
}

/** Checks that a note is signed by one of the JWKS's keys under `origin`. */
export function verifyLogSignature(note: Note, origin: string, jwks: Jwks): void {
  const verifiers: NoteVerifier[] = [];
  for (const jwk of jwks.keys) {
    const raw = Buffer.from(jwk.x, "base64url");
    if (jwk.kty !== "OKP" || jwk.crv !== "Ed25519" || raw.length !== 32) {
      continue;
    }
    const key = ed25519Key(raw);
    verifiers.push({
      name: origin,
      id: logKeyId(origin, raw),
      verify: (text, signature) => ed25519Verify(null, Buffer.from(text), key, signature),
    });
  }
  let verified: string[];
  try {
    verified = verifiedBy(note, verifiers);
  } catch (error) {
    throw new VerifyError(`the checkpoint note does not verify: ${(error as Error).message}`);
  }
  if (verified.length === 0) {
    throw new VerifyError("the checkpoint note does not verify: no signature by a known key");
  }
}

/** A witness's verifier key, parsed; throws when it is not a cosignature/v1 one. */
export function cosignatureVerifier(vkey: string): NoteVerifier {
  const malformed = new Error(`${JSON.stringify(vkey)} is not a cosignature/v1 verifier key`);
  // The key's base64 may hold "+" itself: only the first two split.
  const match = /^([^+]+)\+([^+]+)\+(.+)$/su.exec(vkey);
  const [name, id, encoded] = [match?.[1], match?.[2], match?.[3]];
  if (name === undefined || id === undefined || encoded === undefined) {
    throw malformed;
  }
  const key = Buffer.from(encoded, "base64");
  if (key.length !== 33 || key[0] !== COSIGNATURE_V1 || !/^[0-9a-f]{8}$/iu.test(id)) {
    throw malformed;
  }
  const raw = key.subarray(1);
  const keyId = parseInt(id, 16);
  if (keyId !== noteKeyId(name, COSIGNATURE_V1, raw)) {
    throw malformed;
  }
  const publicKey = ed25519Key(raw);
  return {
    name,
    id: keyId,
    verify: (text, signature) => {
      if (signature.length !== 72) {
        return false;
      }
      const time = signature.readBigUInt64BE(0);
      const message = Buffer.concat([Buffer.from(`cosignature/v1\ntime ${time}\n`), Buffer.from(text)]);
      return time !== 0n && ed25519Verify(null, message, publicKey, signature.subarray(8));
    },
  };
}

/**
 * The names of the witnesses among `witnesses` (verifier keys,
 * `<name>+<key id>+base64(0x04 ‖ key)`) whose cosignature on `note`
 * verifies. A cosignature that names a witness's key but does not verify
 * is a {@link VerifyError}.
 */
export function cosignedBy(note: string, witnesses: readonly string[]): string[] {
  const parsed = parseNote(note);
  const verifiers = witnesses.map(cosignatureVerifier);
  try {
    return verifiedBy(parsed, verifiers);
  } catch (error) {
    throw new VerifyError(`a witness's cosignature does not verify: ${(error as Error).message}`);
  }
}
