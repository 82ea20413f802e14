// The shared conformance vectors (conformance/vectors/), which the server
// writes from its own code: this SDK must reproduce its canonical JSON and
// digests byte for byte, verify every Merkle proof of them and refuse each
// proof altered, take or refuse each signed bundle and checkpoint note as
// they say, rank replicas as they do, and read every library's cache of
// one state.
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { copyFileSync, mkdirSync, mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";

import {
  VerifyError,
  canonicalJson,
  cosignedBy,
  digestOfCanonical,
  verifyConsistency,
  verifyEnvelope,
  verifyInclusion,
  verify,
  verifyNote,
} from "../dist/index.js";
import { keyId } from "../dist/bundle.js";
import { Cache } from "../dist/cache.js";
import { Endpoints } from "../dist/endpoints.js";

const vectorsDir = new URL("../../../conformance/vectors/", import.meta.url);
const vectors = (name) => JSON.parse(readFileSync(new URL(name, vectorsDir), "utf8"));

const canonical = vectors("canonical-json.json").cases;
const merkle = vectors("merkle.json");
const bundles = vectors("bundles.json");
const ranking = vectors("ranking.json");
const notes = vectors("notes.json");
const cache = vectors("cache.json");

for (const { name, input, canonical: expected, digest } of canonical) {
  test(`canonical JSON and its digest: ${name}`, () => {
    const text = canonicalJson(JSON.parse(input));
    assert.equal(text, expected);
    assert.equal(digestOfCanonical(text), digest);
  });
}

/** `proof` with one bit of its first hash flipped, or (an empty proof) `root` with one flipped. */
function tampered(proof, root) {
  const flip = (hash) => {
    const copy = Buffer.from(hash);
    copy[0] ^= 1;
    return copy;
  };
  return proof.length > 0 ? [[flip(proof[0]), ...proof.slice(1)], root] : [proof, flip(root)];
}

/** RFC 9162's leaf hash: SHA-256(0x00 || data). */
const recordHash = (data) => createHash("sha256").update(Buffer.from([0])).update(data).digest();

const hashes = (hex) => hex.map((hash) => Buffer.from(hash, "hex"));

test("every Merkle proof of the vectors verifies, and none altered", () => {
  const leaves = merkle.leaves.map((leaf) => Buffer.from(leaf, "utf8"));
  assert.deepEqual(
    leaves.map((leaf) => recordHash(leaf).toString("hex")),
    merkle.leaf_hashes,
  );
  const roots = new Map(merkle.roots.map(({ tree_size, root }) => [tree_size, Buffer.from(root, "hex")]));
  for (const { tree_size: size, leaf_index: index, proof } of merkle.inclusion) {
    const leaf = recordHash(leaves[index]);
    assert.ok(verifyInclusion(index, size, leaf, roots.get(size), hashes(proof)), `${size} ${index}`);
    const [bad, root] = tampered(hashes(proof), roots.get(size));
    assert.ok(!verifyInclusion(index, size, leaf, root, bad), `${size} ${index}`);
  }
  for (const { old_size: old, new_size: size, proof } of merkle.consistency) {
    assert.ok(verifyConsistency(old, roots.get(old), size, roots.get(size), hashes(proof)), `${old} ${size}`);
    const [bad, root] = tampered(hashes(proof), roots.get(size));
    assert.ok(!verifyConsistency(old, roots.get(old), size, root, bad), `${old} ${size}`);
  }
});

for (const { name, jws, envelope, valid } of bundles.cases) {
  test(`a bundle taken or refused as the vectors say: ${name}`, async () => {
    const taken = await verifyEnvelope(jws, envelope, bundles.jwks).then(
      () => true,
      (error) => {
        assert.ok(error instanceof VerifyError, String(error));
        return false;
      },
    );
    assert.equal(taken, valid);
  });
}

test("each ranking of replicas is the vectors'", () => {
  for (const { runtime_id: id, endpoints, ranking: expected } of ranking.cases) {
    assert.deepEqual(new Endpoints(endpoints, id).ranking, expected, `${id} ${endpoints}`);
  }
});

for (const { name, note, origin, tree, cosigned_by: cosigned } of notes.cases) {
  test(`a checkpoint note verified as the vectors say: ${name}`, () => {
    if (tree === null) {
      assert.throws(() => verifyNote(note, origin, notes.jwks), VerifyError);
    } else {
      const head = verifyNote(note, origin, notes.jwks);
      assert.deepEqual([head.size, head.root.toString("hex")], [tree.size, tree.root]);
    }
    if (cosigned === null) {
      assert.throws(() => cosignedBy(note, notes.witnesses), VerifyError);
    } else if (cosigned !== undefined) {
      assert.deepEqual(cosignedBy(note, notes.witnesses), cosigned);
    }
  });
}

/** The state of the shared cache vectors, as this SDK puts it in force. */
async function sharedState() {
  const bundles = {};
  for (const { jws, revision } of cache.bundles) {
    const claims = await verify(jws, cache.jwks);
    const name = claims.sub.slice(`${cache.namespace}/`.length);
    bundles[name] = {
      name,
      version: claims.ver,
      ...(claims.label === undefined ? {} : { label: claims.label }),
      digest: claims.digest,
      revision,
      keyId: keyId(jws),
      body: claims.body,
      jws,
    };
  }
  return {
    namespace: cache.namespace,
    revision: cache.revision,
    bundles,
    source: "server",
    verifiedAt: new Date(cache.verified_at_unix_ms),
  };
}

// This SDK writes the shared state into its cache as
// conformance/vectors/cache/typescript.state.json holds it (UPDATE_VECTORS=1
// writes it anew), and reads back every library's cache of it, verified
// again, as the state it was.
test("the cache is written as before, and every library's read back", async () => {
  const state = await sharedState();
  const scratch = mkdtempSync(join(tmpdir(), "vectors-"));
  const ours = new Cache(join(scratch, "ours"), state.namespace, []);
  await ours.save(state, cache.jwks);
  const written = readFileSync(ours.path, "utf8");
  const kept = new URL("cache/typescript.state.json", vectorsDir);
  if (process.env.UPDATE_VECTORS) {
    mkdirSync(new URL("cache/", vectorsDir), { recursive: true });
    writeFileSync(kept, written);
    return;
  }
  assert.equal(readFileSync(kept, "utf8"), written);
  for (const library of ["rust", "python", "typescript", "go"]) {
    const theirs = new Cache(join(scratch, library), state.namespace, []);
    mkdirSync(join(scratch, library));
    copyFileSync(new URL(`cache/${library}.state.json`, vectorsDir), theirs.path);
    const loaded = await theirs.load();
    assert.deepEqual(loaded.state, { ...state, source: "cache" }, library);
    assert.deepEqual([loaded.jwks, [...loaded.revoked]], [cache.jwks, []], library);
  }
});
