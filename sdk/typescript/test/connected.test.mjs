// `connected` means a stream is open: the server answered the watch with
// its response headers. A watch refused before the server answered, or a
// server that went away, is a `disconnected` and nothing else.
import assert from "node:assert/strict";
import { test } from "node:test";

import * as grpc from "@grpc/grpc-js";

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

/** A server that serves (no) keys and answers each watch as `answer` says. */
async function server(answer) {
  const grpcServer = new grpc.Server();
  grpcServer.addService(
    { GetSigningKeys: method("GetSigningKeys", false), WatchActive: method("WatchActive", true) },
    {
      GetSigningKeys: (_call, callback) => callback(null, Buffer.alloc(0)),
      WatchActive: (call) => {
        if (answer === "refuse") {
          // A status and no headers: a trailers-only response.
          call.emit("error", { code: grpc.status.UNAVAILABLE, details: "the database is away" });
        } else {
          call.sendMetadata(new grpc.Metadata());
        }
      },
    },
  );
  const port = await new Promise((resolve, reject) =>
    grpcServer.bindAsync("127.0.0.1:0", grpc.ServerCredentials.createInsecure(), (error, port) =>
      error ? reject(error) : resolve(port),
    ),
  );
  return { address: `http://127.0.0.1:${port}`, stop: () => grpcServer.forceShutdown() };
}

/** The first `count` events; `onFirst` runs once the first came. */
async function firstEvents(address, count, onFirst = () => {}) {
  const subscription = new Subscription({
    endpoints: [address],
    namespace: "payments",
    backoff: { initialMs: 10, maxMs: 50 },
    // A server that is down is given up on after this (at least a second).
    heartbeatIntervalMs: 200,
  });
  const seen = [];
  for await (const event of subscription.events(AbortSignal.timeout(20_000))) {
    seen.push(event);
    if (seen.length === 1) onFirst();
    if (seen.length === count) break;
  }
  return seen;
}

test("a watch refused before the server answers is no connection", async () => {
  const { address, stop } = await server("refuse");
  try {
    const seen = await firstEvents(address, 4);
    assert.deepEqual(
      seen.map((event) => event.type),
      ["disconnected", "disconnected", "disconnected", "disconnected"],
    );
    assert.match(seen[0].reason, /Unavailable: the database is away/);
  } finally {
    stop();
  }
});

test("a server that went away is no connection", async () => {
  const { address, stop } = await server("refuse");
  const seen = await firstEvents(address, 4, stop);
  assert.deepEqual(
    seen.map((event) => event.type),
    ["disconnected", "disconnected", "disconnected", "disconnected"],
  );
});

test("a watch the server answers is connected", async () => {
  const { address, stop } = await server("open");
  try {
    const [event] = await firstEvents(address, 1);
    assert.deepEqual(event, { type: "connected", revision: 0, endpoint: address });
  } finally {
    stop();
  }
});
