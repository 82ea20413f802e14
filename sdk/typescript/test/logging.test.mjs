// The subscription says what it does to the application's logger, and
// nothing without one; the error that ends it keeps gRPC's own as its cause.
import assert from "node:assert/strict";
import { test } from "node:test";

import * as grpc from "@grpc/grpc-js";

import { Subscription, WatchError } from "../dist/index.js";

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

/**
 * A server that serves (no) keys and answers a watch with an empty
 * snapshot, after refusing the first `unavailable` ones as unavailable; or
 * refuses every watch with `refusal`.
 */
async function server({ unavailable = 0, refusal } = {}) {
  const grpcServer = new grpc.Server();
  let watches = 0;
  grpcServer.addService(
    { GetSigningKeys: method("GetSigningKeys", false), WatchActive: method("WatchActive", true) },
    {
      GetSigningKeys: (_call, callback) => callback(null, Buffer.alloc(0)),
      WatchActive: (call) => {
        watches += 1;
        if (refusal !== undefined) {
          call.emit("error", refusal);
        } else if (watches <= unavailable) {
          call.emit("error", { code: grpc.status.UNAVAILABLE, details: "the database is away" });
        } else {
          call.write(emptySnapshot);
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

/** Follows `options` until the first `rejected` event. */
async function untilRejected(options) {
  const subscription = new Subscription({ namespace: "payments", backoff: { initialMs: 10, maxMs: 10 }, ...options });
  for await (const event of subscription.events(AbortSignal.timeout(10_000))) {
    if (event.type === "rejected") return;
  }
  assert.fail("no rejected event");
}

test("a logger hears a stream lost and a state rejected, each at its level", async () => {
  const { address, stop } = await server({ unavailable: 1 });
  try {
    const heard = [];
    const logger = Object.fromEntries(
      ["debug", "info", "warn", "error"].map((level) => [level, (message) => heard.push({ level, message })]),
    );
    await untilRejected({ endpoints: [address], logger, validate: () => "not today" });
    const warnings = heard.filter(({ level }) => level === "warn").map(({ message }) => message);
    assert.ok(
      warnings.some((message) =>
        message.startsWith(`watch on ${address} interrupted (Unavailable: the database is away); resuming from revision 0`),
      ),
      JSON.stringify(heard),
    );
    assert.ok(
      warnings.includes("rejected revision 1; the previous one stays in force: not today"),
      JSON.stringify(heard),
    );
  } finally {
    stop();
  }
});

test("without a logger the subscription writes nothing to the console", async (t) => {
  const { address, stop } = await server({ unavailable: 1 });
  const calls = ["debug", "info", "log", "warn", "error"].map((level) => t.mock.method(console, level, () => {}));
  try {
    await untilRejected({ endpoints: [address], validate: () => "not today" });
  } finally {
    t.mock.restoreAll();
    stop();
  }
  assert.deepEqual(
    calls.map((call) => call.mock.callCount()),
    [0, 0, 0, 0, 0],
  );
});

test("a refusal's WatchError keeps gRPC's error as its cause", async () => {
  const { address, stop } = await server({
    refusal: { code: grpc.status.PERMISSION_DENIED, details: "no role for payments" },
  });
  try {
    const subscription = new Subscription({ endpoints: [address], namespace: "payments" });
    const error = await subscription.watch(() => {}).then(
      () => assert.fail("the watch was refused"),
      (error) => error,
    );
    assert.ok(error instanceof WatchError);
    assert.deepEqual([error.kind, error.code], ["refused", grpc.status.PERMISSION_DENIED]);
    assert.ok(error.cause instanceof Error, "gRPC's error is the cause");
    assert.deepEqual([error.cause.code, error.cause.details], [grpc.status.PERMISSION_DENIED, "no role for payments"]);
    assert.ok(error.cause.metadata instanceof grpc.Metadata);
  } finally {
    stop();
  }
});

test("a logger that is not one is refused", () => {
  assert.throws(
    () => new Subscription({ endpoints: ["http://127.0.0.1:1"], namespace: "payments", logger: { warn: () => {} } }),
    (error) => error instanceof TypeError && error.code === "ERR_INVALID_ARG_TYPE" && /"logger" option/.test(error.message),
  );
});
