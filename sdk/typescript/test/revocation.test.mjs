import assert from "node:assert/strict";
import { generateKeyPairSync } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";

import { CompactSign, exportJWK } from "jose";

import { Cache } from "../dist/cache.js";
import { canonicalJson, digestOfCanonical, thumbprint } from "../dist/index.js";
import { settle } from "../dist/session/settings.js";
import { SubscriptionState } from "../dist/session/subscription-state.js";
import { Telemetry } from "../dist/telemetry.js";

/** A signing key, its public half as a JWK, and what it signs. */
async function signer() {
  const { privateKey, publicKey } = generateKeyPairSync("ed25519");
  const { x } = await exportJWK(publicKey);
  const kid = thumbprint(x);
  const jwk = { kty: "OKP", crv: "Ed25519", x, kid, alg: "EdDSA", use: "sig" };
  const sign = (payload) =>
    new CompactSign(new TextEncoder().encode(JSON.stringify(payload)))
      .setProtectedHeader({ alg: "EdDSA", kid, typ: "policyhub-bundle+jwt" })
      .sign(privateKey);
  return { kid, jwk, sign };
}

/** A whole revision of one bundle, `limits` at `version`, signed by `by`. */
async function revision(kind, number, by, version) {
  const body = { max: version };
  const digest = digestOfCanonical(canonicalJson(body));
  const jws = await by.sign({ iss: "policyhub", sub: "ns/limits", ver: version, digest, body, iat: 1 });
  const bundle = { namespace: "ns", name: "limits", version, digest, jws, keyId: by.kid, revision: number };
  return { kind: `WATCH_EVENT_KIND_${kind}`, revision: number, reset: false, bundles: [bundle] };
}

/** Answers GetSigningKeys as a server does: its keys and the revoked ids. */
class KeyServer {
  constructor(...signers) {
    this.keys = signers.map((one) => one.jwk);
    this.revoked = [];
    this.fetched = 0;
  }

  getSigningKeys(_request, _metadata, _options, callback) {
    this.fetched += 1;
    callback(null, { keys: this.keys, revokedKeyIds: this.revoked });
  }
}

function subscriptionState(cacheDir) {
  // The defaults filled in as a subscription fills them.
  const settings = settle({
    endpoints: ["http://127.0.0.1:1"],
    namespace: "ns",
    cacheDir,
    heartbeatIntervalMs: 1_000,
    backoff: { initialMs: 100, maxMs: 1_000 },
    reportSpreadMs: 0,
    maxCheckpointAgeMs: null,
  });
  return new SubscriptionState(settings, new Telemetry("ns"));
}

test("a revoked key is followed: replays are refused and the cache remembers it", async () => {
  const dir = mkdtempSync(join(tmpdir(), "revocation-"));
  try {
    const old = await signer();
    const renewed = await signer();
    const server = new KeyServer(old);
    const state = subscriptionState(dir);
    const first = await revision("SNAPSHOT", 1, old, 1);
    assert.equal((await state.decide(first, server)).type, "applied");
    // The server signs with a new key, revokes the old one and signs
    // version 1 again at a new revision.
    server.keys = [renewed.jwk];
    server.revoked = [old.kid];
    const again = await state.decide(await revision("UPDATE", 2, renewed, 1), server);
    assert.deepEqual([again.type, again.state.revision], ["applied", 2]);
    assert.deepEqual(JSON.parse(readFileSync(join(dir, "ns.state.json"), "utf8")).revoked_key_ids, [old.kid]);
    const replayed = await state.decide(first, server);
    assert.equal(replayed.type, "rejected", "an old message a revoked key signed is refused");
    assert.equal(replayed.revision, 1);
    assert.match(replayed.reason, /revoked key/);
    const fetched = server.fetched;
    const later = await state.decide(await revision("UPDATE", 3, old, 2), server);
    assert.equal(later.type, "rejected");
    assert.match(later.reason, /does not verify: signed by revoked key/);
    assert.equal(server.fetched, fetched, "a revoked key is no unknown key to fetch again");

    // Restarted with the server away: the cache holds the revocation.
    const restarted = subscriptionState(dir);
    const events = [];
    await restarted.start(async (event) => {
      events.push(event);
    });
    assert.deepEqual(
      events.map((event) => [event.type, event.state?.revision]),
      [["fromCache", 2]],
    );
    assert.notEqual(restarted.signedByRevoked(first.bundles), undefined);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("a revocation that concerns the state in force is cached at once", async () => {
  const dir = mkdtempSync(join(tmpdir(), "revocation-"));
  try {
    const old = await signer();
    const renewed = await signer();
    const server = new KeyServer(old);
    const state = subscriptionState(dir);
    assert.equal((await state.decide(await revision("SNAPSHOT", 1, old, 1), server)).type, "applied");
    server.keys = [renewed.jwk];
    server.revoked = [old.kid];
    await state.refreshKeys(server);
    await assert.rejects(new Cache(dir, "ns", []).load(), /signed by revoked key/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("a cached state signed by a revoked key is refused; a cache without revoked keys loads", async () => {
  const dir = mkdtempSync(join(tmpdir(), "revocation-"));
  try {
    const key = await signer();
    const server = new KeyServer(key);
    await subscriptionState(dir).decide(await revision("SNAPSHOT", 4, key, 2), server);
    const cache = new Cache(dir, "ns", []);
    const text = readFileSync(cache.path, "utf8");
    assert.equal(JSON.parse(text).revoked_key_ids, undefined, "as earlier versions wrote");
    const { state, jwks, revoked } = await cache.load();
    assert.deepEqual([state.revision, revoked.size], [4, 0]);
    await cache.save(state, jwks, new Set([key.kid]));
    await assert.rejects(cache.load(), /a bundle is signed by revoked key/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
