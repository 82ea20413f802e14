// The server's 64-bit integers become numbers only when a number holds them
// exactly (up to 2^53 − 1); beyond, they are refused, named, rather than
// rounded.
import assert from "node:assert/strict";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";

import * as grpc from "@grpc/grpc-js";

import { Cache } from "../dist/cache.js";
import { Subscription } from "../dist/index.js";

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

/** A protobuf varint. */
function varint(value) {
  let rest = BigInt(value);
  const bytes = [];
  do {
    const low = Number(rest & 0x7fn);
    rest >>= 7n;
    bytes.push(rest === 0n ? low : low | 0x80);
  } while (rest !== 0n);
  return Buffer.from(bytes);
}
const field = (number, wire, bytes) => Buffer.concat([varint((number << 3) | wire), bytes]);
const number = (n, value) => field(n, 0, varint(value));
const bytes = (n, contents) => field(n, 2, Buffer.concat([varint(contents.length), contents]));

/** A complete snapshot at `revision`, with a bundle active since `bundleRevision` when given. */
function snapshot(revision, bundleRevision) {
  const parts = [number(1, 1), number(2, revision)];
  if (bundleRevision !== undefined) {
    parts.push(bytes(4, Buffer.concat([bytes(2, Buffer.from("limits")), number(3, 1), number(8, bundleRevision)])));
  }
  parts.push(number(5, 1));
  return Buffer.concat(parts);
}

/** A server that serves (no) keys and answers each watch with `message`. */
async function server(message) {
  const grpcServer = new grpc.Server();
  grpcServer.addService(
    { GetSigningKeys: method("GetSigningKeys", false), WatchActive: method("WatchActive", true) },
    {
      GetSigningKeys: (_call, callback) => callback(null, Buffer.alloc(0)),
      WatchActive: (call) => call.write(message),
    },
  );
  const port = await new Promise((resolve, reject) =>
    grpcServer.bindAsync("127.0.0.1:0", grpc.ServerCredentials.createInsecure(), (error, port) =>
      error ? reject(error) : resolve(port),
    ),
  );
  return { address: `http://127.0.0.1:${port}`, stop: () => grpcServer.forceShutdown() };
}

/** The first event after `connected` of a subscription to a server that sends `message`. */
async function afterConnected(message) {
  const { address, stop } = await server(message);
  try {
    const subscription = new Subscription({
      endpoints: [address],
      namespace: "payments",
      backoff: { initialMs: 60_000, maxMs: 60_000 },
    });
    for await (const event of subscription.events(AbortSignal.timeout(10_000))) {
      if (event.type !== "connected") return event;
    }
    assert.fail("no event after connected");
  } finally {
    stop();
  }
}

const MAX = 2n ** 53n - 1n;

test("a revision of 2^53 − 1 is taken exactly", async () => {
  const event = await afterConnected(snapshot(MAX));
  assert.equal(event.type, "applied");
  assert.equal(event.state.revision, Number.MAX_SAFE_INTEGER);
});

test("a revision beyond 2^53 − 1 is refused, named, where it was rounded", async () => {
  const event = await afterConnected(snapshot(MAX + 2n));
  assert.equal(event.type, "disconnected", JSON.stringify(event));
  assert.equal(
    event.reason,
    "the message's revision 9007199254740993 is beyond 2^53 − 1 (9007199254740991), the largest integer this runtime holds exactly",
  );
  assert.equal(event.revision, 0, "nothing was taken");
});

test("a bundle's revision beyond 2^53 − 1 is refused too", async () => {
  const event = await afterConnected(snapshot(5n, MAX + 1n));
  assert.equal(event.type, "disconnected", JSON.stringify(event));
  assert.match(event.reason, /^the revision of limits version 1 9007199254740992 is beyond 2\^53 − 1/u);
});

test("a cached state whose revision is beyond 2^53 − 1 is refused", async () => {
  const dir = mkdtempSync(join(tmpdir(), "cache-"));
  try {
    const cache = new Cache(dir, "payments", []);
    await cache.save({ namespace: "payments", revision: 7, bundles: {}, source: "server", verifiedAt: new Date(5) }, {
      keys: [],
    });
    const { state } = await cache.load();
    assert.equal(state.revision, 7);
    writeFileSync(
      cache.path,
      `{"format":1,"namespace":"payments","names":[],"revision":9007199254740993,"jwks":{"keys":[]},"bundles":[]}`,
    );
    await assert.rejects(cache.load(), /^Error: it is not a cache: its revision 9007199254740992 is beyond 2\^53 − 1/u);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
