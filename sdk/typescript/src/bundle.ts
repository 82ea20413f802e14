/**
 * The signed bundle format, as the server signs it and every runtime
 * verifies it: a JWS compact serialization (RFC 7515) whose payload carries
 * the whole policy, so that it verifies offline with nothing but the JWKS.
 *
 * ```text
 * header  {"alg":"EdDSA","kid":"<RFC 7638 thumbprint>","typ":"policyhub-bundle+jwt"}
 * payload {"iss","sub":"namespace/name","ver","label","digest","body","iat"}
 * ```
 *
 * @module
 */

import { type KeyObject, createHash, createPublicKey, verify as verifyEd25519 } from "node:crypto";

import canonicalizeModule from "canonicalize";
import { decodeProtectedHeader } from "jose";

/** The JWS `typ` header of every bundle. */
export const BUNDLE_TYPE = "policyhub-bundle+jwt";

/** A public key as an RFC 7517 JSON Web Key (`kty: OKP`, `crv: Ed25519`). */
export interface Jwk {
  /** Key type, `OKP`. */
  kty: string;
  /** Curve, `Ed25519`. */
  crv: string;
  /** The 32-byte public key, base64url without padding. */
  x: string;
  /** RFC 7638 thumbprint. */
  kid: string;
  /** `EdDSA`. */
  alg: string;
  /** `sig`. */
  use: string;
}

/** A JWK Set: the keys that verify bundles and checkpoints. */
export interface Jwks {
  /** The keys. */
  keys: Jwk[];
}

/** A JSON object, as a policy's body is. */
export type JsonObject = { [key: string]: unknown };

/** The claims of a signed bundle. */
export interface BundleClaims {
  /** Issuer: the deployment's configured name. */
  iss: string;
  /** `namespace/name` of the policy. */
  sub: string;
  /** Version number. */
  ver: number;
  /** Release label, if any. */
  label?: string;
  /** Digest of the body's canonical JSON. */
  digest: string;
  /** The policy document. */
  body: JsonObject;
  /** Publish time, seconds since the epoch. */
  iat: number;
}

/** Why a bundle or a checkpoint did not verify. */
export class VerifyError extends Error {
  override name = "VerifyError";
}

/**
 * `canonicalize` (RFC 8785, by one of its authors) is a CommonJS module
 * whose types declare an ES default export: under Node's ESM its default
 * import is the function itself.
 */
const canonicalize = canonicalizeModule as unknown as (value: unknown) => string | undefined;

/** RFC 8785 canonical JSON of a JSON value: the bytes a digest covers. */
export function canonicalJson(value: unknown): string {
  const text = canonicalize(value);
  if (text === undefined) {
    throw new VerifyError("the value has no JSON form");
  }
  return text;
}

/** `sha256:` + lowercase hex of the SHA-256 of canonical JSON bytes. */
export function digestOfCanonical(canonical: string | Uint8Array): string {
  return `sha256:${createHash("sha256").update(canonical).digest("hex")}`;
}

/** RFC 7638 thumbprint of an Ed25519 key given as its base64url `x`. */
export function thumbprint(x: string): string {
  const required = canonicalJson({ crv: "Ed25519", kty: "OKP", x });
  return createHash("sha256").update(required).digest("base64url");
}

/** Whether a key with this id is in the set. */
export function knows(jwks: Jwks, kid: string): boolean {
  return jwks.keys.some((key) => key.kid === kid);
}

/**
 * The key ids of the JWSs read last: a message's bundles and checkpoint are
 * asked for theirs several times over (revoked? known? which key verifies
 * it?), and a header is decoded once. Bounded: the strings it holds are
 * the few of the messages just read.
 */
const keyIds = new Map<string, string>();
const KEY_IDS_HELD = 16;

/** The key id a JWS's header names, without verifying anything. */
export function keyId(jws: string): string {
  const known = keyIds.get(jws);
  if (known !== undefined) {
    return known;
  }
  let header;
  try {
    header = decodeProtectedHeader(jws);
  } catch (error) {
    throw new VerifyError(`not a signed bundle: ${message(error)}`);
  }
  if (typeof header.kid !== "string" || header.kid === "") {
    throw new VerifyError('signed by unknown key ""');
  }
  if (keyIds.size >= KEY_IDS_HELD) {
    keyIds.clear();
  }
  keyIds.set(jws, header.kid);
  return header.kid;
}

function message(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

function isObject(value: unknown): value is JsonObject {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

/** A segment of a compact JWS: base64url, without padding. */
const BASE64URL = /^[A-Za-z0-9_-]*$/u;

/**
 * The Ed25519 public keys of the JWKS seen, by their `x`: a key is imported
 * once, not at every signature it checks. Bounded: a server that rotates
 * keys forever does not grow it forever.
 */
const importedKeys = new Map<string, KeyObject>();
const IMPORTED_KEYS_HELD = 64;

/** The public key a JWK of Ed25519 names, imported once. */
export function ed25519PublicKey(x: string): KeyObject {
  let key = importedKeys.get(x);
  if (key === undefined) {
    key = createPublicKey({ key: { kty: "OKP", crv: "Ed25519", x }, format: "jwk" });
    if (importedKeys.size >= IMPORTED_KEYS_HELD) {
      importedKeys.clear();
    }
    importedKeys.set(x, key);
  }
  return key;
}

/**
 * Checks a JWS of policyhub's formats offline: its `typ` header is `typ`,
 * its algorithm EdDSA, its key one of `jwks`, its signature good; returns
 * its payload, parsed. A header that names critical extensions (RFC 7515
 * §4.1.11), which policyhub never writes, is refused.
 */
export function verifySignature(jws: string, typ: string, jwks: Jwks): JsonObject {
  let header;
  try {
    header = decodeProtectedHeader(jws);
  } catch (error) {
    throw new VerifyError(`not a signed bundle: ${message(error)}`);
  }
  if (header.alg !== "EdDSA") {
    throw new VerifyError(`signature check failed: algorithm ${JSON.stringify(header.alg)} is not EdDSA`);
  }
  if (header.typ !== typ) {
    throw new VerifyError(`signature check failed: type ${JSON.stringify(header.typ)} is not ${typ}`);
  }
  const kid = header.kid ?? "";
  const jwk = jwks.keys.find((key) => key.kid === kid && key.kty === "OKP" && key.crv === "Ed25519");
  if (jwk === undefined) {
    throw new VerifyError(`signed by unknown key ${JSON.stringify(kid)}`);
  }
  if (header.crit !== undefined) {
    throw new VerifyError(`signature check failed: critical extensions ${JSON.stringify(header.crit)} are not understood`);
  }
  const parts = jws.split(".");
  const [protectedHeader, encodedPayload, encodedSignature] = parts;
  if (
    parts.length !== 3 ||
    protectedHeader === undefined ||
    encodedPayload === undefined ||
    encodedSignature === undefined ||
    !BASE64URL.test(protectedHeader) ||
    !BASE64URL.test(encodedPayload) ||
    !BASE64URL.test(encodedSignature)
  ) {
    throw new VerifyError("signature check failed: not a compact JWS of base64url segments");
  }
  let good: boolean;
  try {
    const key = ed25519PublicKey(jwk.x);
    const signingInput = Buffer.from(`${protectedHeader}.${encodedPayload}`, "latin1");
    good = verifyEd25519(null, signingInput, key, Buffer.from(encodedSignature, "base64url"));
  } catch (error) {
    throw new VerifyError(`signature check failed: ${message(error)}`);
  }
  if (!good) {
    throw new VerifyError("signature check failed: signature verification failed");
  }
  let claims: unknown;
  try {
    claims = JSON.parse(Buffer.from(encodedPayload, "base64url").toString("utf8"));
  } catch (error) {
    throw new VerifyError(`not a signed bundle: its payload is not JSON: ${message(error)}`);
  }
  if (!isObject(claims)) {
    throw new VerifyError("not a signed bundle: its payload is not a JSON object");
  }
  return claims;
}

/** The claims of a payload, when they have the bundle's shape. */
function bundleClaims(payload: JsonObject): BundleClaims {
  const { iss, sub, ver, label, digest, body, iat } = payload;
  const wrong = (field: string, kind: string): never => {
    throw new VerifyError(`not a signed bundle: its claim ${field} is not ${kind}`);
  };
  if (typeof iss !== "string") wrong("iss", "a string");
  if (typeof sub !== "string") wrong("sub", "a string");
  if (typeof ver !== "number" || !Number.isInteger(ver) || ver < 0) wrong("ver", "a version number");
  if (label !== undefined && label !== null && typeof label !== "string") wrong("label", "a string");
  if (typeof digest !== "string") wrong("digest", "a string");
  if (typeof iat !== "number") wrong("iat", "a number");
  if (!isObject(body)) {
    throw new VerifyError("not a signed bundle: the body is not a JSON object");
  }
  return {
    iss: iss as string,
    sub: sub as string,
    ver: ver as number,
    ...(typeof label === "string" ? { label } : {}),
    digest: digest as string,
    body,
    iat: iat as number,
  };
}

/**
 * Verifies a bundle offline against a JWKS: header type, algorithm, key,
 * signature, and that the digest claim matches the body.
 */
export function verify(jws: string, jwks: Jwks): Promise<BundleClaims> {
  return new Promise((resolve) => {
    resolve(verifyBundle(jws, jwks));
  });
}

/** {@link verify}, at once. */
function verifyBundle(jws: string, jwks: Jwks): BundleClaims {
  const claims = bundleClaims(verifySignature(jws, BUNDLE_TYPE, jwks));
  const actual = digestOfCanonical(canonicalJson(claims.body));
  if (actual !== claims.digest) {
    throw new VerifyError(
      `digest ${JSON.stringify(claims.digest)} does not match the body, whose digest is ${JSON.stringify(actual)}`,
    );
  }
  return claims;
}

/** What the envelope around a signed bundle says it holds. */
export interface Envelope {
  /** Namespace asked for. */
  namespace: string;
  /** Policy name the envelope carries. */
  name: string;
  /** Version the envelope carries. */
  version: number;
  /** Digest the envelope carries. */
  digest: string;
}

/**
 * Verifies a bundle, and that its signed payload is the policy, version and
 * body its envelope names: a valid bundle of another policy, or an old
 * version replayed under a new envelope, is refused.
 */
export function verifyEnvelope(jws: string, envelope: Envelope, jwks: Jwks): Promise<BundleClaims> {
  return new Promise((resolve) => {
    resolve(verifyEnvelopeNow(jws, envelope, jwks));
  });
}

/** {@link verifyEnvelope}, at once. */
function verifyEnvelopeNow(jws: string, envelope: Envelope, jwks: Jwks): BundleClaims {
  const claims = verifyBundle(jws, jwks);
  const expected = `${envelope.namespace}/${envelope.name}`;
  if (claims.sub !== expected) {
    throw new VerifyError(`the bundle for ${expected} is signed for ${claims.sub}`);
  }
  if (claims.ver !== envelope.version || claims.digest !== envelope.digest) {
    throw new VerifyError(
      `the envelope says version ${envelope.version} ${envelope.digest}, ` +
        `the signed payload version ${claims.ver} ${claims.digest}`,
    );
  }
  return claims;
}
