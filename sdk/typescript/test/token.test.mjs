import assert from "node:assert/strict";
import fs, { mkdirSync, mkdtempSync, renameSync, rmSync, symlinkSync, utimesSync, writeFileSync } from "node:fs";
import { syncBuiltinESMExports } from "node:module";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";

import * as grpc from "@grpc/grpc-js";

import { Subscription, WatchError, tokenFile } from "../dist/index.js";

const raw = (x) => x;
const method = (name, responseStream) => ({
  path: `/policyhub.v1.BundleService/${name}`,
  requestStream: false,
  responseStream,
  requestSerialize: raw,
  requestDeserialize: raw,
  responseSerialize: raw,
  responseDeserialize: raw,
});
/** A complete, empty snapshot at revision 1. */
const emptySnapshot = Buffer.from([0x08, 0x01, 0x10, 0x01, 0x28, 0x01]);

/** A server that serves only the bearer of `accepted`. */
async function server(accepted) {
  const grpcServer = new grpc.Server();
  const allowed = (call) => call.metadata.get("authorization")[0] === `Bearer ${accepted}`;
  const refusal = { code: grpc.status.UNAUTHENTICATED, details: "the token expired" };
  grpcServer.addService(
    { GetSigningKeys: method("GetSigningKeys", false), WatchActive: method("WatchActive", true) },
    {
      GetSigningKeys: (call, callback) => (allowed(call) ? callback(null, Buffer.alloc(0)) : callback(refusal)),
      WatchActive: (call) => (allowed(call) ? call.write(emptySnapshot) : call.destroy(refusal)),
    },
  );
  const port = await new Promise((resolve, reject) =>
    grpcServer.bindAsync("127.0.0.1:0", grpc.ServerCredentials.createInsecure(), (error, port) =>
      error ? reject(error) : resolve(port),
    ),
  );
  return { address: `http://127.0.0.1:${port}`, stop: () => grpcServer.forceShutdown() };
}

test("a refused token is an event, and the token file rotated in place is read and taken at once", async () => {
  const dir = mkdtempSync(join(tmpdir(), "token-"));
  const { address, stop } = await server("new");
  try {
    const file = join(dir, "token");
    writeFileSync(file, "old\n");
    const subscription = new Subscription({
      endpoints: [address],
      namespace: "payments",
      token: tokenFile(file),
      retryWhenRefused: true,
      // Far longer than the test: only a new token brings the runtime back.
      backoff: { initialMs: 60_000, maxMs: 60_000 },
    });
    const seen = [];
    for await (const event of subscription.events(AbortSignal.timeout(10_000))) {
      seen.push(event);
      if (event.type === "refused") writeFileSync(file, "new\n");
      if (event.type === "applied") break;
    }
    assert.deepEqual(
      seen.map((event) => event.type),
      ["refused", "connected", "applied"],
    );
    assert.match(seen[0].reason, /Unauthenticated: the token expired/);
  } finally {
    stop();
    rmSync(dir, { recursive: true, force: true });
  }
});

test("without retryWhenRefused, a refused token ends the subscription with a WatchError", async () => {
  const { address, stop } = await server("new");
  try {
    const subscription = new Subscription({ endpoints: [address], namespace: "payments", token: () => "old" });
    await assert.rejects(subscription.watch(() => {}), (error) => error instanceof WatchError && error.kind === "refused");
  } finally {
    stop();
  }
});

/** Sets the modification time of the file `path` leads to a minute back, as a token written a while ago has it. */
const writtenAMinuteAgo = (path) => {
  const past = new Date(Date.now() - 60_000);
  utimesSync(path, past, past);
};

/** Writes `token` as the kubelet does: a new directory, then the `..data` symlink swapped onto it by a rename. */
const project = (dir, generation, token) => {
  mkdirSync(join(dir, `..${generation}`));
  writeFileSync(join(dir, `..${generation}`, "token"), token);
  symlinkSync(join(dir, `..${generation}`), join(dir, "..data_tmp"));
  renameSync(join(dir, "..data_tmp"), join(dir, "..data"));
};

test("an unchanged token file is read once, and a rotation at the next call", (t) => {
  const dir = mkdtempSync(join(tmpdir(), "token-"));
  const reads = t.mock.method(fs, "readFileSync");
  syncBuiltinESMExports();
  try {
    project(dir, 1, "first\n");
    symlinkSync("..data/token", join(dir, "token"));
    writtenAMinuteAgo(join(dir, "token"));
    const source = tokenFile(join(dir, "token"));
    const counted = () => reads.mock.calls.filter((call) => call.arguments[0] === join(dir, "token")).length;
    for (let i = 0; i < 100; i++) assert.equal(source(), "first");
    assert.equal(counted(), 1, "an unchanged file is read once");
    project(dir, 2, "second\n");
    assert.equal(source(), "second");
    writtenAMinuteAgo(join(dir, "token"));
    for (let i = 0; i < 100; i++) assert.equal(source(), "second");
    assert.equal(counted(), 3, "the rotated file is read once it changed, and once settled");
  } finally {
    t.mock.restoreAll();
    syncBuiltinESMExports();
    rmSync(dir, { recursive: true, force: true });
  }
});

test("a token file rewritten in place at once is read again", () => {
  // Same inode, same size, and most likely the same modification time, to
  // the file system's clock.
  const dir = mkdtempSync(join(tmpdir(), "token-"));
  try {
    const source = tokenFile(join(dir, "token"));
    for (const token of ["aaaa", "bbbb", "cccc"]) {
      writeFileSync(join(dir, "token"), token);
      assert.equal(source(), token);
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
