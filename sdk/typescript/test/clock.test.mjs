// Deadlines are kept on a monotonic clock: a step of the wall clock (NTP
// correcting it, a virtual machine resumed) is no silence of the server and
// no longer wait.
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
/** A complete, empty snapshot at revision 1. */
const emptySnapshot = Buffer.from([0x08, 0x01, 0x10, 0x01, 0x28, 0x01]);
const HOUR_MS = 3_600_000;

/**
 * A server that serves (no) keys and answers each watch with an empty
 * snapshot, then silence; the first `refusals` watches it refuses as
 * unavailable.
 */
async function server(refusals = 0) {
  const grpcServer = new grpc.Server();
  let watches = 0;
  grpcServer.addService(
    { GetSigningKeys: method("GetSigningKeys", false), WatchActive: method("WatchActive", true) },
    {
      GetSigningKeys: (_call, callback) => callback(null, Buffer.alloc(0)),
      WatchActive: (call) => {
        watches += 1;
        if (watches <= refusals) {
          // A status and no headers: a trailers-only response.
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

/**
 * Steps the wall clock by `stepMs`: from now on `Date.now()` and `new
 * Date()` are that far from the real time (both, as gRPC reads either),
 * until the test ends.
 */
function stepWallClock(t, stepMs) {
  const RealDate = globalThis.Date;
  class SteppedDate extends RealDate {
    constructor(...args) {
      super(...(args.length === 0 ? [RealDate.now() + stepMs] : args));
    }

    static now() {
      return RealDate.now() + stepMs;
    }
  }
  globalThis.Date = SteppedDate;
  t.after(() => {
    globalThis.Date = RealDate;
  });
}

test("the wall clock stepped an hour forward is no silence: no false 'no message' disconnect", async (t) => {
  const { address, stop } = await server();
  try {
    // Three heartbeats of silence (3 s) would end the stream.
    const subscription = new Subscription({ endpoints: [address], namespace: "payments", heartbeatIntervalMs: 1_000 });
    const seen = [];
    const controller = new AbortController();
    await subscription.watch((event) => {
      seen.push(event.type === "disconnected" ? `disconnected: ${event.reason}` : event.type);
      if (event.type === "applied") {
        stepWallClock(t, HOUR_MS);
        setTimeout(() => controller.abort(), 500);
      }
    }, controller.signal);
    assert.deepEqual(seen, ["connected", "applied"]);
  } finally {
    stop();
  }
});

test("the wall clock stepped an hour back during a backoff does not stretch it by the hour", async (t) => {
  const { address, stop } = await server(1);
  // A backoff of 500 ms exactly (full jitter takes half of its 1 s bound).
  t.mock.method(Math, "random", () => 0.5);
  try {
    const subscription = new Subscription({
      endpoints: [address],
      namespace: "payments",
      backoff: { initialMs: 1_000, maxMs: 1_000 },
    });
    const seen = [];
    const started = performance.now();
    for await (const event of subscription.events(AbortSignal.timeout(5_000))) {
      seen.push(event.type);
      // Within the backoff's wait.
      if (event.type === "disconnected") setTimeout(() => stepWallClock(t, -HOUR_MS), 100);
      if (event.type === "applied") break;
    }
    assert.deepEqual(seen, ["disconnected", "connected", "applied"]);
    assert.ok(performance.now() - started < 3_000, "reconnected after its backoff");
  } finally {
    stop();
  }
});
