import assert from "node:assert/strict";
import { generateKeyPairSync } from "node:crypto";
import { fileURLToPath } from "node:url";
import { test } from "node:test";

import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";
import { CompactSign, exportJWK } from "jose";

import { Subscription, canonicalJson, digestOfCanonical, thumbprint } from "../dist/index.js";

const definition = protoLoader.loadSync("policyhub/v1/bundle_service.proto", {
  includeDirs: [fileURLToPath(new URL("../dist/proto/", import.meta.url))],
  longs: Number,
  enums: String,
  defaults: true,
});
const { BundleService } = grpc.loadPackageDefinition(definition).policyhub.v1;

/** A server signing one policy's versions, and what it was told. */
async function server() {
  const { privateKey, publicKey } = generateKeyPairSync("ed25519");
  const { x } = await exportJWK(publicKey);
  const kid = thumbprint(x);
  const bundle = async (version, body, revision) => {
    const digest = digestOfCanonical(canonicalJson(body));
    const claims = { iss: "test", sub: "payments/limits", ver: version, digest, body, iat: 1 };
    const jws = await new CompactSign(new TextEncoder().encode(JSON.stringify(claims)))
      .setProtectedHeader({ alg: "EdDSA", kid, typ: "policyhub-bundle+jwt" })
      .sign(privateKey);
    return { namespace: "payments", name: "limits", version, digest, jws, keyId: kid, revision };
  };
  const messages = [
    { kind: "WATCH_EVENT_KIND_SNAPSHOT", revision: 1, complete: true, bundles: [await bundle(1, { max: 10 }, 1)] },
    { kind: "WATCH_EVENT_KIND_UPDATE", revision: 2, complete: true, bundles: [await bundle(2, { max: -1 }, 2)] },
    { kind: "WATCH_EVENT_KIND_UPDATE", revision: 3, complete: true, bundles: [await bundle(3, { max: 20 }, 3)] },
  ];
  const reports = [];
  const grpcServer = new grpc.Server();
  grpcServer.addService(BundleService.service, {
    GetSigningKeys: (_call, callback) =>
      callback(null, { keys: [{ kty: "OKP", crv: "Ed25519", x, kid, alg: "EdDSA", use: "sig" }] }),
    WatchActive: (call) => {
      for (const message of messages.filter((m) => m.revision > call.request.sinceRevision)) call.write(message);
    },
    ReportStatusStream: (call) => {
      call.on("data", (report) => {
        reports.push(report);
        call.write({ ignored: 0 });
      });
    },
  });
  const port = await new Promise((resolve, reject) =>
    grpcServer.bindAsync("127.0.0.1:0", grpc.ServerCredentials.createInsecure(), (error, port) =>
      error ? reject(error) : resolve(port),
    ),
  );
  return { address: `http://127.0.0.1:${port}`, reports, stop: () => grpcServer.forceShutdown() };
}

test("a state the validation refuses is reported REJECTED with its reason, and the one before stays in force", async () => {
  const { address, reports, stop } = await server();
  try {
    const subscription = new Subscription({
      endpoints: [address],
      namespace: "payments",
      runtime: { id: "enforcer-1" },
      reportSpreadMs: 0,
      validate: async (state) => (state.bundles.limits.body.max < 0 ? "max must not be negative" : undefined),
    });
    const seen = [];
    await assert.rejects(
      subscription.watch((event) => {
        seen.push(event);
        if (event.type === "applied" && event.state.revision === 3) throw new Error("done");
      }),
      /done/,
    );
    const decided = seen.filter((event) => event.type === "applied" || event.type === "rejected");
    assert.deepEqual(
      decided.map((event) => [event.type, event.state?.revision ?? event.revision]),
      [["applied", 1], ["rejected", 2], ["applied", 3]],
    );
    assert.equal(decided[1].reason, "max must not be negative");
    const rejected = reports.flatMap((report) => report.policies).find((policy) => policy.version === 2);
    assert.deepEqual([rejected.state, rejected.error], ["APPLY_STATE_REJECTED", "max must not be negative"]);
  } finally {
    stop();
  }
});

test("with OpenTelemetry's API installed, decisions are counted by outcome and traced", async () => {
  const { metrics, trace } = await import("@opentelemetry/api");
  const counted = [];
  const spans = [];
  const instrument = (name) => ({
    add: (value, attributes) => counted.push([name, value, attributes.outcome]),
    record: (value) => counted.push([name, value]),
  });
  metrics.setGlobalMeterProvider({
    getMeter: () => ({ createCounter: instrument, createGauge: instrument }),
  });
  const tracer = {
    startActiveSpan: (name, options, work) => {
      const span = { attributes: { ...options.attributes }, setAttribute: (k, v) => (span.attributes[k] = v), setStatus() {}, end() { spans.push([name, span.attributes]); } };
      return work(span);
    },
  };
  trace.setGlobalTracerProvider({ getTracer: () => tracer });
  const { address, stop } = await server();
  try {
    const subscription = new Subscription({
      endpoints: [address],
      namespace: "payments",
      validate: (state) => (state.bundles.limits.body.max < 0 ? "max must not be negative" : undefined),
    });
    for await (const event of subscription.events()) {
      if (event.type === "applied" && event.state.revision === 3) break;
    }
    const decisions = counted.filter(([name]) => name === "policyhub.runtime.decisions").map(([, , outcome]) => outcome);
    assert.deepEqual(decisions, ["applied", "rejected", "applied"]);
    assert.deepEqual(
      counted.filter(([name]) => name === "policyhub.runtime.revision").map(([, value]) => value),
      [1, 3],
    );
    assert.deepEqual(
      spans.map(([name, attributes]) => [name, attributes["policyhub.revision"], attributes["policyhub.outcome"]]),
      [["policyhub.runtime.decide", 1, "applied"], ["policyhub.runtime.decide", 2, "rejected"], ["policyhub.runtime.decide", 3, "applied"]],
    );
  } finally {
    stop();
    metrics.disable();
    trace.disable();
  }
});
