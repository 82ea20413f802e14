import assert from "node:assert/strict";
import { generateKeyPairSync, sign as signBytes } from "node:crypto";
import { test } from "node:test";

import { CompactSign, exportJWK } from "jose";

import { canonicalJson, digestOfCanonical, thumbprint, verify, verifyEnvelope } from "../dist/index.js";

/** A signing key and the JWKS that holds its public half. */
async function keyPair() {
  const { privateKey, publicKey } = generateKeyPairSync("ed25519");
  const { x } = await exportJWK(publicKey);
  const kid = thumbprint(x);
  return { privateKey, kid, jwks: { keys: [{ kty: "OKP", crv: "Ed25519", x, kid, alg: "EdDSA", use: "sig" }] } };
}

function claims(body, overrides = {}) {
  return {
    iss: "policyhub",
    sub: "payments/limits",
    ver: 3,
    digest: digestOfCanonical(canonicalJson(body)),
    body,
    iat: 1_700_000_000,
    ...overrides,
  };
}

async function sign(privateKey, header, payload) {
  return new CompactSign(new TextEncoder().encode(JSON.stringify(payload))).setProtectedHeader(header).sign(privateKey);
}

test("the thumbprint matches RFC 8037's example", () => {
  assert.equal(thumbprint("11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"), "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k");
});

test("the digest ignores key order and number spelling", () => {
  const a = digestOfCanonical(canonicalJson({ b: 1, a: [1.0, "x"] }));
  const b = digestOfCanonical(canonicalJson(JSON.parse('{"a":[1,"x"],"b":1.0}')));
  assert.equal(a, b);
});

test("a bundle signed by a key of the JWKS verifies, and its envelope must match it", async () => {
  const { privateKey, kid, jwks } = await keyPair();
  const body = { maxAmount: 100 };
  const jws = await sign(privateKey, { alg: "EdDSA", kid, typ: "policyhub-bundle+jwt" }, claims(body));
  assert.deepEqual((await verify(jws, jwks)).body, body);
  const envelope = { namespace: "payments", name: "limits", version: 3, digest: claims(body).digest };
  await verifyEnvelope(jws, envelope, jwks);
  await assert.rejects(verifyEnvelope(jws, { ...envelope, name: "other" }, jwks), /signed for payments\/limits/);
  await assert.rejects(verifyEnvelope(jws, { ...envelope, version: 4 }, jwks), /the envelope says version 4/);
});

test("alg none, an unknown key, another type, a bad signature and a wrong digest are refused", async () => {
  const { privateKey, kid, jwks } = await keyPair();
  const header = { alg: "EdDSA", kid, typ: "policyhub-bundle+jwt" };
  const good = await sign(privateKey, header, claims({ a: 1 }));
  const [, payload] = good.split(".");
  const none = `${Buffer.from(JSON.stringify({ alg: "none", kid, typ: header.typ })).toString("base64url")}.${payload}.`;
  await assert.rejects(verify(none, jwks), /algorithm "none" is not EdDSA/);
  const other = await keyPair();
  await assert.rejects(verify(await sign(other.privateKey, { ...header, kid: other.kid }, claims({ a: 1 })), jwks), /unknown key/);
  await assert.rejects(verify(await sign(privateKey, { ...header, typ: "JWT" }, claims({ a: 1 })), jwks), /type "JWT"/);
  const [h, , s] = good.split(".");
  const altered = `${h}.${Buffer.from(JSON.stringify(claims({ a: 2 }, { digest: claims({ a: 1 }).digest }))).toString("base64url")}.${s}`;
  await assert.rejects(verify(altered, jwks), /signature check failed/);
  await assert.rejects(verify(await sign(privateKey, header, claims({ a: 1 }, { digest: "sha256:00" })), jwks), /does not match the body/);
  await assert.rejects(verify(await sign(privateKey, header, claims({ a: 1 }, { ver: "3" })), jwks), /ver is not a version number/);
  await assert.rejects(verify("not a jws", jwks), /not a signed bundle/);
});

test("a compact JWS is read strictly: critical extensions, segments not base64url and other than three segments are refused", async () => {
  const { privateKey, kid, jwks } = await keyPair();
  const header = { alg: "EdDSA", kid, typ: "policyhub-bundle+jwt" };
  const good = await sign(privateKey, header, claims({ a: 1 }));
  // A key seen before verifies again.
  assert.deepEqual((await verify(good, jwks)).body, { a: 1 });
  assert.deepEqual((await verify(good, jwks)).body, { a: 1 });
  // Signed by hand: jose signs no extension it does not know either.
  const encode = (value) => Buffer.from(JSON.stringify(value)).toString("base64url");
  const input = `${encode({ ...header, crit: ["exp"], exp: 1 })}.${encode(claims({ a: 1 }))}`;
  const critical = `${input}.${signBytes(null, Buffer.from(input), privateKey).toString("base64url")}`;
  await assert.rejects(verify(critical, jwks), /critical extensions \["exp"\]/);
  const [h, p, s] = good.split(".");
  for (const bad of [`${h}.${p}.${s.slice(0, -2)}!!`, `${h}.${p}+.${s}`, `${h}.${p}.${s}=`]) {
    await assert.rejects(verify(bad, jwks), /signature check failed/);
  }
  for (const bad of [`${h}.${p}`, `${h}.${p}.${s}.${s}`, `${h}*.${p}.${s}`]) {
    await assert.rejects(verify(bad, jwks), /not a signed bundle/);
  }
});
