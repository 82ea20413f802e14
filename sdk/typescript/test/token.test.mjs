import assert from "node:assert/strict";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
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
