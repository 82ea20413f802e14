// Options the subscription cannot follow are refused by `new Subscription`,
// naming the option and its value, rather than followed into a loop: a
// negative heartbeat interval had it connect and drop the stream at once,
// again and again.
import assert from "node:assert/strict";
import { test } from "node:test";

import { Subscription, tokenFile } from "../dist/index.js";

const base = { endpoints: ["http://127.0.0.1:50051"], namespace: "payments" };

/** Asserts that `options` (over `base`) are refused with `kind`, `code` and a message matching `message`. */
function refused(options, kind, code, message) {
  assert.throws(
    () => new Subscription({ ...base, ...options }),
    (error) => {
      assert.ok(error instanceof kind, `${error} is not a ${kind.name}`);
      assert.equal(error.code, code);
      assert.match(error.message, message);
      return true;
    },
  );
}

test("a duration out of range is a RangeError naming the option and the value", () => {
  const range = (options, message) => refused(options, RangeError, "ERR_OUT_OF_RANGE", message);
  range({ heartbeatIntervalMs: -1 }, /^The value of "heartbeatIntervalMs" is out of range\. It must be >= 1 && <= 2147483647\. Received -1$/);
  range({ heartbeatIntervalMs: 0 }, /"heartbeatIntervalMs" .* Received 0$/);
  range({ heartbeatIntervalMs: Number.NaN }, /"heartbeatIntervalMs" .* Received NaN$/);
  range({ heartbeatIntervalMs: 2 ** 31 }, /"heartbeatIntervalMs" .* Received 2147483648$/);
  range({ backoff: { initialMs: -100, maxMs: 30_000 } }, /"backoff\.initialMs" .* Received -100$/);
  range({ backoff: { initialMs: 1_000, maxMs: -1 } }, /"backoff\.maxMs" .* Received -1$/);
  range({ backoff: { initialMs: 5_000, maxMs: 1_000 } }, /"backoff\.initialMs" .* It must be <= backoff\.maxMs \(1000\)\. Received 5000$/);
  range({ rebalanceIntervalMs: 0 }, /"rebalanceIntervalMs" .* Received 0$/);
  range({ reportSpreadMs: -1 }, /"reportSpreadMs" .* It must be >= 0 && .* Received -1$/);
  range({ maxCheckpointAgeMs: 0 }, /"maxCheckpointAgeMs" .* Received 0$/);
  range({ maxCheckpointAgeMs: Infinity }, /"maxCheckpointAgeMs" .* Received Infinity$/);
  range({ witnesses: { keys: [], required: 1 } }, /"witnesses\.required" .* <= 0 \(the keys given\)\. Received 1$/);
});

test("an address that is not http:// or https:// is a TypeError naming it", () => {
  const value = (endpoints, message) => refused({ endpoints }, TypeError, "ERR_INVALID_ARG_VALUE", message);
  value(["ftp://127.0.0.1:50051"], /^The "endpoints" option must hold http:\/\/ or https:\/\/ addresses .* Received 'ftp:\/\/127\.0\.0\.1:50051'$/);
  value(["http://127.0.0.1:50051", "gopher://replica-2:50051"], /Received 'gopher:\/\/replica-2:50051'$/);
  value(["127.0.0.1:50051"], /Received '127\.0\.0\.1:50051'$/);
  value(["http://127.0.0.1:50051/policyhub"], /Received 'http:\/\/127\.0\.0\.1:50051\/policyhub'$/);
  value(["not a url"], /Received 'not a url'$/);
  value([], /"endpoints" option must name at least one address\. Received \[\]$/);
});

test("an option of the wrong type is a TypeError naming it", () => {
  const type = (options, message) => refused(options, TypeError, "ERR_INVALID_ARG_TYPE", message);
  type({ heartbeatIntervalMs: "10000" }, /^The "heartbeatIntervalMs" option must be a number of milliseconds\. Received '10000'$/);
  type({ endpoints: "http://127.0.0.1:50051" }, /"endpoints" option must be an array of strings/);
  type({ names: "card-limits" }, /"names" option must be an array of strings\. Received 'card-limits'$/);
  type({ token: "eyJhbGciOi" }, /"token" option must be a function that returns the token/);
  type({ backoff: 1_000 }, /"backoff" option must be an object \{ initialMs, maxMs \}\. Received 1000$/);
  type({ runtime: "enforcer-1" }, /"runtime" option must be an object/);
  type({ namespace: undefined }, /"namespace" option must be a string\. Received undefined$/);
  type({ witnesses: { keys: [], required: "1" } }, /"witnesses\.required" option must be an integer/);
  refused({ witnesses: { keys: ["not-a-key"], required: 1 } }, TypeError, "ERR_INVALID_ARG_VALUE", /"witnesses\.keys" option must hold cosignature\/v1 verifier keys\. Received 'not-a-key'$/);
  refused({ namespace: "" }, TypeError, "ERR_INVALID_ARG_VALUE", /"namespace" option must not be empty/);
});

test("options in range are taken as given", () => {
  const subscription = new Subscription({
    endpoints: ["http://127.0.0.1:50051/", "https://replica-2"],
    namespace: "payments",
    names: ["card-limits"],
    runtime: { id: "enforcer-1", labels: { region: "eu" } },
    token: tokenFile("runtime.token"),
    heartbeatIntervalMs: 1,
    backoff: { initialMs: 1, maxMs: 1 },
    reportSpreadMs: 0,
    maxCheckpointAgeMs: null,
  });
  assert.equal(subscription.options.heartbeatIntervalMs, 1);
});
