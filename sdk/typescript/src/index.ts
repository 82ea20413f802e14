/**
 * `@policyhub/runtime`: what a Node runtime needs to follow policyhub
 * safely. One {@link Subscription} hands the application verified, whole
 * states ("the complete active set at revision R"), never half of an
 * atomic release. It resumes after any failure from the last revision it
 * decided on, verifies every bundle against the server's JWKS, keeps a
 * last-known-good cache on disk, never goes backwards, reports what the
 * application applied or rejected, and checks the server's signed
 * checkpoints, its log's consistency and witness cosignatures.
 *
 * ```ts
 * import { Subscription, tokenFile } from "@policyhub/runtime";
 *
 * const subscription = new Subscription({
 *   endpoints: ["http://127.0.0.1:50051"],
 *   namespace: "payments",
 *   runtime: { id: "enforcer-1" },
 *   token: tokenFile("runtime.token"),
 *   cacheDir: "cache",
 *   validate: (state) =>
 *     typeof state.bundles["card-limits"]?.body.maxAmount === "number" ? undefined : "maxAmount must be a number",
 * });
 * for await (const event of subscription.events()) {
 *   if (event.type === "applied" || event.type === "fromCache") {
 *     console.log(event.state.revision, event.state.bundles["card-limits"]?.body);
 *   }
 * }
 * ```
 *
 * Layout: `subscription` (the public face), `options` (what it takes),
 * `errors` (how it stops for good), `session/` (connect, resume,
 * verify, decide, report; its `drive` holds the loop and says where the
 * rest is), `state` (whole states and events), `bundle`
 * (the signed bundle format), `checkpoint` (signed checkpoints), `tree`
 * and `note` (the log's Merkle tree, signed notes, witness cosignatures),
 * `cache`, `endpoints`, `backoff`, `clock` (the monotonic clock of
 * deadlines), `integers` (the server's 64-bit integers, exactly), `token`,
 * `connection` (the generated gRPC client), `telemetry` (OpenTelemetry,
 * when installed).
 *
 * @module
 */

export {
  BUNDLE_TYPE,
  type BundleClaims,
  type Envelope,
  type JsonObject,
  type Jwk,
  type Jwks,
  VerifyError,
  canonicalJson,
  digestOfCanonical,
  thumbprint,
  verify,
  verifyEnvelope,
} from "./bundle.js";
export { CHECKPOINT_TYPE, type CheckpointClaims, verifyCheckpoint } from "./checkpoint.js";
export type { TlsOptions } from "./connection.js";
export { cosignedBy } from "./note.js";
export { reportDelay } from "./session/reporter.js";
export type { Event, Source, State, VerifiedBundle } from "./state.js";
export { WatchError } from "./errors.js";
export {
  DEFAULT_HEARTBEAT_INTERVAL_MS,
  DEFAULT_MAX_CHECKPOINT_AGE_MS,
  DEFAULT_REBALANCE_INTERVAL_MS,
  DEFAULT_REPORT_SPREAD_MS,
  HEARTBEAT_INTERVAL_HEADER,
  type Logger,
  type SubscriptionOptions,
  type Validate,
} from "./options.js";
export { Subscription } from "./subscription.js";
export { type TokenSource, tokenFile } from "./token.js";
export { type TreeHead, verifyConsistency, verifyInclusion, verifyNote } from "./tree.js";
