// `events()`: nothing connects before the loop asks for a first event, one
// event at most waits for a slow loop, and the listener it puts on the
// application's signal goes when the loop leaves or the subscription ends.
import assert from "node:assert/strict";
import { getEventListeners } from "node:events";
import { test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";

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
/** A complete, empty snapshot at `revision` (under 128). */
const emptySnapshot = (revision) => Buffer.from([0x08, 0x01, 0x10, revision, 0x28, 0x01]);

/**
 * A server that serves (no) keys and answers each watch with empty
 * snapshots at revisions 1 to `revisions`, all at once, or refuses it with
 * `refusal`; `calls` counts the calls it took.
 */
async function server({ revisions = 1, refusal } = {}) {
  const grpcServer = new grpc.Server();
  const served = { calls: 0 };
  grpcServer.addService(
    { GetSigningKeys: method("GetSigningKeys", false), WatchActive: method("WatchActive", true) },
    {
      GetSigningKeys: (_call, callback) => {
        served.calls += 1;
        callback(null, Buffer.alloc(0));
      },
      WatchActive: (call) => {
        served.calls += 1;
        if (refusal !== undefined) {
          call.emit("error", refusal);
          return;
        }
        for (let revision = 1; revision <= revisions; revision++) call.write(emptySnapshot(revision));
      },
    },
  );
  const port = await new Promise((resolve, reject) =>
    grpcServer.bindAsync("127.0.0.1:0", grpc.ServerCredentials.createInsecure(), (error, port) =>
      error ? reject(error) : resolve(port),
    ),
  );
  return { address: `http://127.0.0.1:${port}`, served, stop: () => grpcServer.forceShutdown() };
}

test("nothing connects before the loop asks for a first event", async () => {
  const { address, served, stop } = await server();
  try {
    const events = new Subscription({ endpoints: [address], namespace: "payments" }).events();
    await sleep(300);
    assert.equal(served.calls, 0, "no call before the first next()");
    const first = await events.next();
    assert.equal(first.value.type, "connected");
    assert.ok(served.calls > 0);
    await events.return();
  } finally {
    stop();
  }
});

test("a slow loop holds the subscription back: one event at most waits for it", async () => {
  const { address, stop } = await server({ revisions: 100 });
  try {
    let validated = 0;
    const subscription = new Subscription({
      endpoints: [address],
      namespace: "payments",
      validate: () => {
        validated += 1;
        return undefined;
      },
    });
    const revisions = [];
    for await (const event of subscription.events(AbortSignal.timeout(10_000))) {
      if (event.type === "connected") {
        // The server sent 100 revisions; the loop is busy elsewhere.
        await sleep(300);
        assert.ok(validated <= 3, `${validated} revisions decided while the loop took none`);
      }
      if (event.type === "applied") revisions.push(event.state.revision);
      if (revisions.length === 100) break;
    }
    assert.deepEqual(revisions, Array.from({ length: 100 }, (_, i) => i + 1), "none lost, in order");
  } finally {
    stop();
  }
});

test("the listener on the application's signal goes when the loop leaves, or the subscription ends", async () => {
  const { address, stop } = await server();
  const refusing = await server({ refusal: { code: grpc.status.PERMISSION_DENIED, details: "no role" } });
  try {
    const application = new AbortController();
    for await (const event of new Subscription({ endpoints: [address], namespace: "payments" }).events(
      application.signal,
    )) {
      assert.equal(event.type, "connected");
      assert.equal(getEventListeners(application.signal, "abort").length, 1, "listened to while it runs");
      break;
    }
    assert.equal(getEventListeners(application.signal, "abort").length, 0, "after the loop left");
    const refused = new Subscription({ endpoints: [refusing.address], namespace: "payments" });
    await assert.rejects(async () => {
      for await (const event of refused.events(application.signal)) assert.fail(`no event, but ${event.type}`);
    }, WatchError);
    assert.equal(getEventListeners(application.signal, "abort").length, 0, "after the subscription ended");
  } finally {
    stop();
    refusing.stop();
  }
});

test("a signal aborted already ends the loop at once, connecting nothing", async () => {
  const { address, served, stop } = await server();
  try {
    const subscription = new Subscription({ endpoints: [address], namespace: "payments" });
    const seen = [];
    for await (const event of subscription.events(AbortSignal.abort())) seen.push(event);
    await subscription.watch((event) => seen.push(event), AbortSignal.abort());
    assert.deepEqual(seen, []);
    assert.equal(served.calls, 0);
  } finally {
    stop();
  }
});
