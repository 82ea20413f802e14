import assert from "node:assert/strict";
import { mkdtempSync, mkdirSync, readdirSync, renameSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";

import { Backoff } from "../dist/backoff.js";
import { Cache } from "../dist/cache.js";
import { Freshness } from "../dist/checkpoint.js";
import { Endpoints, rebalanceDelay } from "../dist/endpoints.js";
import { Assembler } from "../dist/state.js";
import { reportDelay, tokenFile } from "../dist/index.js";

const addresses = (n) => Array.from({ length: n }, (_, i) => `http://replica-${i}:50051`);

test("the ranking is a function of the runtime id, and a fleet spreads evenly", () => {
  const once = new Endpoints(addresses(3), "enforcer-7");
  const again = new Endpoints(addresses(3).reverse(), "enforcer-7");
  assert.deepEqual(once.ranking, again.ranking);
  const preferred = new Map();
  for (let i = 0; i < 3000; i++) {
    const first = new Endpoints(addresses(3), `runtime-${i}`).preferred();
    preferred.set(first, (preferred.get(first) ?? 0) + 1);
  }
  assert.equal(preferred.size, 3);
  for (const [endpoint, count] of preferred) {
    assert.ok(count > 850 && count < 1150, `${endpoint}: ${count} of 3000`);
  }
});

test("removing an address moves only the runtimes that preferred it", () => {
  const all = addresses(4);
  for (let i = 0; i < 500; i++) {
    const before = new Endpoints(all, `runtime-${i}`);
    const after = new Endpoints(all.slice(0, 3), `runtime-${i}`);
    const expected = before.preferred() === all[3] ? before.ranking[1] : before.preferred();
    assert.equal(after.preferred(), expected);
  }
});

test("failures move down the ranking and a whole round calls for the backoff", () => {
  const endpoints = new Endpoints(addresses(3), "enforcer-1");
  const ranked = [...endpoints.ranking];
  assert.ok(endpoints.onPreferred());
  assert.equal(endpoints.failed(), false);
  assert.equal(endpoints.current(), ranked[1]);
  assert.equal(endpoints.failed(), false);
  assert.equal(endpoints.failed(), true, "three addresses failed in a row");
  assert.equal(endpoints.current(), ranked[0]);
  endpoints.failed();
  endpoints.movedToPreferred();
  assert.ok(endpoints.onPreferred());
});

test("delays stay under a doubling capped bound, spread from zero", () => {
  const backoff = new Backoff(100, 800);
  for (const bound of [100, 200, 400, 800, 800, 800]) {
    assert.ok(backoff.nextDelay() < bound);
  }
  const early = Array.from({ length: 1000 }, () => new Backoff(1000, 1000).nextDelay()).filter((d) => d < 250).length;
  assert.ok(early > 150 && early < 350, `${early} of 1000 in the first quarter`);
  const spread = Array.from({ length: 1000 }, () => [reportDelay(4000), rebalanceDelay(4000)]).flat();
  assert.ok(spread.every((delay) => delay >= 2000 && delay <= 4000));
});

test("parts become one revision only when complete", () => {
  const part = (revision, names, complete) => ({
    kind: "WATCH_EVENT_KIND_SNAPSHOT",
    revision,
    reset: false,
    bundles: names.map((name) => ({ name })),
    complete,
    checkpoint: null,
  });
  const assembler = new Assembler();
  assert.equal(assembler.push(part(4, ["a", "b"], false)), undefined);
  assert.equal(assembler.push(part(4, ["c"], false)), undefined);
  const whole = assembler.push(part(4, ["d"], true));
  assert.deepEqual([whole.revision, whole.bundles.map((b) => b.name)], [4, ["a", "b", "c", "d"]]);
  assert.equal(assembler.push(part(5, ["a"], false)), undefined);
  assert.throws(() => assembler.push(part(6, ["a"], true)), /interrupted revision 5/);
});

test("a projected token swapped by its symlink is read on the next call; a missing one keeps the last", () => {
  const dir = mkdtempSync(join(tmpdir(), "token-"));
  try {
    const project = (generation, token) => {
      mkdirSync(join(dir, `..${generation}`));
      writeFileSync(join(dir, `..${generation}`, "token"), token);
      symlinkSync(join(dir, `..${generation}`), join(dir, "..data_tmp"));
      renameSync(join(dir, "..data_tmp"), join(dir, "..data"));
    };
    project(1, "first\n");
    symlinkSync("..data/token", join(dir, "token"));
    const source = tokenFile(join(dir, "token"));
    assert.equal(source(), "first");
    project(2, "second\n");
    assert.equal(source(), "second");
    rmSync(join(dir, "token"));
    assert.equal(source(), "second");
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("a cache that is not one, or of another namespace, is refused; an empty one loads back", async () => {
  const dir = mkdtempSync(join(tmpdir(), "cache-"));
  try {
    const cache = new Cache(dir, "payments", []);
    assert.equal(await cache.load(), undefined);
    const state = { namespace: "payments", revision: 7, bundles: {}, source: "server", verifiedAt: new Date(5) };
    await cache.save(state, { keys: [] });
    await cache.saveTree("a note");
    await cache.saveRestore(12);
    const { state: loaded } = await cache.load();
    assert.deepEqual([loaded.revision, loaded.source, loaded.verifiedAt.getTime()], [7, "cache", 5]);
    assert.equal(await cache.loadTree(), "a note");
    assert.equal(await cache.loadRestore(), 12);
    await assert.rejects(new Cache(dir, "payments", ["limits"]).load(), /it holds namespace payments \[\]/);
    writeFileSync(cache.path, "not a cache");
    await assert.rejects(cache.load(), /it is not a cache/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("two subscriptions of one namespace write one cache directory at once, and it always reads whole", async () => {
  const dir = mkdtempSync(join(tmpdir(), "cache-"));
  try {
    const state = { namespace: "payments", revision: 7, bundles: {}, source: "server", verifiedAt: new Date(5) };
    // Keys enough that a file read half written would not parse.
    const jwks = {
      keys: Array.from({ length: 100 }, (_, i) => ({ kty: "OKP", crv: "Ed25519", x: "A".repeat(43), kid: `key-${i}` })),
    };
    const reader = new Cache(dir, "payments", []);
    await reader.save(state, jwks);
    await reader.saveTree("a note");
    // Each subscription keeps its own cache of the namespace, in one directory.
    const write = async (cache) => {
      for (let leaf = 0; leaf < 100; leaf++) {
        await cache.save(state, jwks);
        await cache.saveTree("a note");
        await cache.saveRestore(leaf);
      }
    };
    let writing = true;
    const writers = Promise.all([write(new Cache(dir, "payments", [])), write(new Cache(dir, "payments", []))]).finally(
      () => {
        writing = false;
      },
    );
    let reads = 0;
    while (writing) {
      const { jwks: loaded } = await reader.load();
      assert.equal(loaded.keys.length, 100);
      assert.equal(await reader.loadTree(), "a note");
      reads += 1;
    }
    await writers;
    assert.ok(reads > 0);
    assert.deepEqual(readdirSync(dir).sort(), ["payments.state.json", "payments.state.restore", "payments.state.tree"]);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("a checkpoint's staleness is a fixed deadline on the monotonic clock, passed at once for one too old", () => {
  const claims = (revision) => ({ revision, lastEventId: revision, chainHead: "", time: "" });
  const freshness = new Freshness(1_000);
  assert.equal(freshness.deadline(), undefined, "no checkpoint yet");
  freshness.observe(claims(1), new Date(Date.now() - 400), "a");
  const deadline = freshness.deadline();
  assert.ok(deadline > performance.now() + 500 && deadline <= performance.now() + 600, `${deadline}`);
  freshness.observe(claims(2), new Date(Date.now() - 5_000), "b");
  assert.equal(freshness.deadline(), deadline, "an older checkpoint changes nothing");
  const old = new Freshness(1_000);
  old.observe(claims(1), new Date(Date.now() - 5_000), "c");
  const passed = old.deadline();
  assert.ok(passed <= performance.now(), "passed already");
  assert.equal(old.deadline(), passed, "and it stays where it is, call after call");
  old.expire();
  assert.equal(old.deadline(), undefined, "stale: none until a fresh one");
});
