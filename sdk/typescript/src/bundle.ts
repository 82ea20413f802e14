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

import { createHash } from "node:crypto";

import canonicalizeModule from "canonicalize";
import { compactVerify, decodeProtectedHeader, importJWK } from "jose";

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

/** The key id a JWS's header names, without verifying anything. */
export function keyId(jws: string): string {
  let header;
  try {
    header = decodeProtectedHeader(jws);
  } catch (error) {
    throw new VerifyError(`not a signed bundle: ${message(error)}`);
  }
  if (typeof header.kid !== "string" || header.kid === "") {
    throw new VerifyError('signed by unknown key ""');
  }
  return header.kid;
}

function message(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

function isObject(value: unknown): value is JsonObject {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

/**
 * Checks a JWS of policyhub's formats offline: its `typ` header is `typ`,
 * its algorithm EdDSA, its key one of `jwks`, its signature good; returns
 * its payload, parsed.
 */
export async function verifySignature(jws: string, typ: string, jwks: Jwks): Promise<JsonObject> {
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
  let payload: Uint8Array;
  try {
    const key = await importJWK({ kty: jwk.kty, crv: jwk.crv, x: jwk.x }, "EdDSA");
    ({ payload } = await compactVerify(jws, key, { algorithms: ["EdDSA"] }));
  } catch (error) {
    throw new VerifyError(`signature check failed: ${message(error)}`);
  }
  let claims: unknown;
  try {
    claims = JSON.parse(new TextDecoder().decode(payload));
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
export async function verify(jws: string, jwks: Jwks): Promise<BundleClaims> {
  const claims = bundleClaims(await verifySignature(jws, BUNDLE_TYPE, jwks));
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
export async function verifyEnvelope(jws: string, envelope: Envelope, jwks: Jwks): Promise<BundleClaims> {
  const claims = await verify(jws, jwks);
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
