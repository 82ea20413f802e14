import assert from "node:assert/strict";
import { createHash, generateKeyPairSync, sign } from "node:crypto";
import { test } from "node:test";

import { cosignedBy, verifyConsistency, verifyInclusion } from "../dist/index.js";

const sha256 = (...parts) => {
  const hash = createHash("sha256");
  for (const part of parts) hash.update(part);
  return hash.digest();
};
const leaf = (data) => sha256(Buffer.from([0]), data);
const node = (l, r) => sha256(Buffer.from([1]), l, r);

/** RFC 9162's MTH over leaf hashes. */
function root(leaves) {
  if (leaves.length === 1) return leaves[0];
  let k = 1;
  while (k * 2 < leaves.length) k *= 2;
  return node(root(leaves.slice(0, k)), root(leaves.slice(k)));
}

/** RFC 9162's PATH(m, D[n]). */
function inclusion(m, leaves) {
  if (leaves.length <= 1) return [];
  let k = 1;
  while (k * 2 < leaves.length) k *= 2;
  return m < k
    ? [...inclusion(m, leaves.slice(0, k)), root(leaves.slice(k))]
    : [...inclusion(m - k, leaves.slice(k)), root(leaves.slice(0, k))];
}

/** RFC 9162's SUBPROOF(m, D[n], b). */
function subproof(m, leaves, whole) {
  if (m === leaves.length) return whole ? [] : [root(leaves)];
  let k = 1;
  while (k * 2 < leaves.length) k *= 2;
  return m <= k
    ? [...subproof(m, leaves.slice(0, k), whole), root(leaves.slice(k))]
    : [...subproof(m - k, leaves.slice(k), false), root(leaves.slice(0, k))];
}

const leaves = Array.from({ length: 13 }, (_, i) => leaf(`event ${i}`));

test("consistency proofs between every pair of sizes verify, and fail against another root", () => {
  for (let m = 1; m <= leaves.length; m++) {
    for (let n = m; n <= leaves.length; n++) {
      const proof = subproof(m, leaves.slice(0, n), true);
      const [first, second] = [root(leaves.slice(0, m)), root(leaves.slice(0, n))];
      assert.ok(verifyConsistency(m, first, n, second, proof), `${m} -> ${n}`);
      if (m < n) {
        assert.ok(!verifyConsistency(m, leaf("forked"), n, second, proof), `forked ${m} -> ${n}`);
      }
    }
  }
  assert.ok(!verifyConsistency(5, root(leaves.slice(0, 5)), 4, root(leaves.slice(0, 4)), []));
});

test("inclusion proofs verify for every leaf, and not for another leaf", () => {
  const top = root(leaves);
  for (let i = 0; i < leaves.length; i++) {
    assert.ok(verifyInclusion(i, leaves.length, leaves[i], top, inclusion(i, leaves)), `leaf ${i}`);
    assert.ok(!verifyInclusion(i, leaves.length, leaf("other"), top, inclusion(i, leaves)), `other ${i}`);
  }
});

/** A witness: its verifier key, and its cosignature line on a text at `time`. */
function witness(name) {
  const { privateKey, publicKey } = generateKeyPairSync("ed25519");
  const raw = Buffer.from(publicKey.export({ format: "jwk" }).x, "base64url");
  const key = Buffer.concat([Buffer.from([4]), raw]);
  const id = sha256(`${name}\n`, key).subarray(0, 4);
  const vkey = `${name}+${id.toString("hex")}+${key.toString("base64")}`;
  const cosign = (text, time) => {
    const stamp = Buffer.alloc(8);
    stamp.writeBigUInt64BE(BigInt(time));
    const signature = sign(null, Buffer.from(`cosignature/v1\ntime ${time}\n${text}`), privateKey);
    return `\u2014 ${name} ${Buffer.concat([id, stamp, signature]).toString("base64")}\n`;
  };
  return { vkey, cosign };
}

test("cosignatures verify under their witnesses' keys, and not over another text", () => {
  const text = "log.example/a\n3\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n";
  const [one, two] = [witness("witness.example/w1"), witness("witness.example/w2")];
  const note = `${text}\n${one.cosign(text, 1_700_000_000)}${two.cosign(text, 1_700_000_001)}`;
  assert.deepEqual(cosignedBy(note, [one.vkey, two.vkey]), ["witness.example/w1", "witness.example/w2"]);
  assert.deepEqual(cosignedBy(note, [one.vkey]), ["witness.example/w1"]);
  assert.deepEqual(cosignedBy(`${text}\n${one.cosign(text, 1)}`, [two.vkey]), []);
  assert.throws(() => cosignedBy(note.replace("\n3\n", "\n4\n"), [one.vkey]), /does not verify/);
  assert.throws(() => cosignedBy(note, ["not a key"]), /not a cosignature\/v1 verifier key/);
});
