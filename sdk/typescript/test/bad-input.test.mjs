import assert from "node:assert/strict";
import { test } from "node:test";

import * as grpc from "@grpc/grpc-js";

import { Subscription } from "../dist/index.js";

const raw = (x) => x;
/** A method of BundleService whose answers are written as raw protobuf bytes. */
const method = (name, responseStream) => ({
  path: `/policyhub.v1.BundleService/${name}`,
  requestStream: false,
  responseStream,
  requestSerialize: raw,
  requestDeserialize: raw,
  responseSerialize: raw,
  responseDeserialize: raw,
});

/** A complete, empty snapshot at revision 1: kind = 1, revision = 1, complete = true. */
const emptySnapshot = Buffer.from([0x08, 0x01, 0x10, 0x01, 0x28, 0x01]);

test("a malformed, a mistyped and an oversized message are each an event with a reason, and the watch goes on", async () => {
  const answers = [
    Buffer.from([0xff, 0xff, 0xff, 0xff]),
    // Field 1 (kind, a varint) sent as a length-delimited string.
    Buffer.from([0x0a, 0x03, 0x61, 0x62, 0x63, 0x28, 0x01]),
    // A bundle of 5 MiB, larger than gRPC's 4 MiB.
    Buffer.concat([Buffer.from([0x22, 0x80, 0x80, 0xc0, 0x02]), Buffer.alloc(5 * 1024 * 1024)]),
    emptySnapshot,
  ];
  const server = new grpc.Server();
  server.addService(
    { GetSigningKeys: method("GetSigningKeys", false), WatchActive: method("WatchActive", true) },
    {
      GetSigningKeys: (_call, callback) => callback(null, Buffer.alloc(0)),
      WatchActive: (call) => call.write(answers.shift() ?? emptySnapshot),
    },
  );
  const port = await new Promise((resolve, reject) =>
    server.bindAsync("127.0.0.1:0", grpc.ServerCredentials.createInsecure(), (error, port) =>
      error ? reject(error) : resolve(port),
    ),
  );
  try {
    const subscription = new Subscription({
      endpoints: [`http://127.0.0.1:${port}`],
      namespace: "payments",
      heartbeatIntervalMs: 1000,
      backoff: { initialMs: 10, maxMs: 20 },
    });
    const seen = [];
    for await (const event of subscription.events(AbortSignal.timeout(20_000))) {
      seen.push(event);
      if (event.type === "applied") break;
    }
    const reasons = seen.filter((event) => event.type === "disconnected").map((event) => event.reason);
    assert.equal(reasons.length, 3, JSON.stringify(seen));
    assert.ok(reasons.every((reason) => reason.length > 0));
    assert.match(reasons[2], /ResourceExhausted/);
    assert.equal(seen.at(-1).state.revision, 1);
  } finally {
    server.forceShutdown();
  }
});
