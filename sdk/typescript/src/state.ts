/**
 * Whole, verified states, the events a subscription says, and how watch
 * messages become whole revisions.
 *
 * @module
 */

import type { JsonObject } from "./bundle.js";
import { exactInteger } from "./integers.js";
import type { Bundle } from "./generated/policyhub/v1/Bundle.js";
import type { WatchActiveResponse } from "./generated/policyhub/v1/WatchActiveResponse.js";
import type { WatchEventKind } from "./generated/policyhub/v1/WatchEventKind.js";

/**
 * How the session says events to the application; once the subscription
 * is stopped, it throws (the session's `gone` failure) rather than say.
 */
export type Say = (event: Event) => Promise<void>;

/** A bundle whose signature, digest and subject were checked. */
export interface VerifiedBundle {
  /** Policy name. */
  name: string;
  /** Version number. */
  version: number;
  /** Release label, if any. */
  label?: string;
  /** `sha256:` digest of the body's canonical JSON. */
  digest: string;
  /** Revision at which this version became active. */
  revision: number;
  /** Key that signed it. */
  keyId: string;
  /** The policy document, from the verified payload. */
  body: JsonObject;
  /** The signed bundle itself, for caching or passing on. */
  jws: string;
}

/** Where a state came from: the server, or the last-known-good cache read back at start. */
export type Source = "server" | "cache";

/** The complete active set of a namespace (or of the selected policies) at one revision. */
export interface State {
  /** The namespace. */
  namespace: string;
  /** Everything up to this revision is in the state. */
  revision: number;
  /** Active bundles by policy name. */
  bundles: Record<string, VerifiedBundle>;
  /** Server or cache. */
  source: Source;
  /** When the server's state was verified and accepted (kept through the cache). */
  verifiedAt: Date;
}

/** What happened to a subscription. */
export type Event =
  /** At start, the last-known-good state read back from the cache and verified again: in force until the server answers. */
  | { type: "fromCache"; state: State }
  /**
   * A stream to the server is open (the server answered the watch with its
   * response headers); what changed after `revision` follows. A watch that
   * fails before the server answers is only a `disconnected`.
   */
  | { type: "connected"; revision: number; endpoint: string }
  /** A new whole state, every bundle verified and the application's validation passed: in force, cached, reported APPLIED. */
  | { type: "applied"; state: State }
  /** A state refused (a bundle did not verify, or the validation refused it): the previous one stays, and the refusal is reported REJECTED. */
  | { type: "rejected"; revision: number; reason: string }
  /** The server's newest signed checkpoint is older than the subscription's `maxCheckpointAgeMs`: the state in force stays; the subscription reconnects. */
  | { type: "checkpointStale"; revision: number; signedAt: Date; ageMs: number }
  /** After `checkpointStale`, a current checkpoint arrived. */
  | { type: "checkpointFresh"; revision: number; signedAt: Date }
  /** The server showed a history that does not extend the one verified last: nothing it sends is applied; the subscription retries after `retryInMs`. */
  | { type: "historyRefused"; reason: string; verifiedSize: number; retryInMs: number }
  /** The server proved that its log records a restore its operator declared: its tree is taken from now on. */
  | { type: "historyRestored"; reason: string; fromSize: number; toSize: number }
  /** The server refused the credentials of a subscription that retries refusals. */
  | { type: "refused"; reason: string; retryInMs: number }
  /** The stream was lost; the subscription reconnects after `retryInMs` and resumes from `revision`. */
  | { type: "disconnected"; reason: string; retryInMs: number; revision: number };

/** A bundle of the stream, its revision read exactly. */
export type StreamBundle = Omit<Bundle, "revision"> & { revision: number };

/** A message of the stream, its 64-bit integers read exactly. */
export type WatchMessage = Omit<WatchActiveResponse, "revision" | "bundles"> & {
  revision: number;
  bundles: StreamBundle[];
};

/**
 * Reads a message of the stream: its revision and its bundles' as numbers,
 * refused (a `RangeError` naming the field) beyond 2^53 − 1 rather than
 * rounded.
 */
export function readMessage(message: WatchActiveResponse): WatchMessage {
  return {
    ...message,
    revision: exactInteger("the message's revision", message.revision),
    bundles: message.bundles.map((bundle) => ({
      ...bundle,
      revision: exactInteger(`the revision of ${bundle.name} version ${bundle.version}`, bundle.revision),
    })),
  };
}

/** A whole revision, assembled from its parts. */
export interface Revision {
  kind: WatchEventKind;
  revision: number;
  /** The server is behind the client (a restored database). */
  reset: boolean;
  /** Every bundle of every part. */
  bundles: StreamBundle[];
}

/**
 * Gathers the parts of one revision (`complete = false` on all but the
 * last), so that the application never sees half of an atomic release.
 */
export class Assembler {
  private pending: Revision | undefined;

  /**
   * Adds a message; the whole revision once its last part arrived. A part
   * that does not continue the pending revision throws.
   */
  push(message: WatchMessage): Revision | undefined {
    const pending = this.pending;
    this.pending = undefined;
    let part: Revision;
    if (pending === undefined) {
      part = { kind: message.kind, revision: message.revision, reset: message.reset, bundles: [...message.bundles] };
    } else {
      if (pending.kind !== message.kind || pending.revision !== message.revision) {
        throw new Error(
          `a part of revision ${message.revision} (${message.kind}) interrupted revision ` +
            `${pending.revision} (${pending.kind})`,
        );
      }
      pending.bundles.push(...message.bundles);
      part = pending;
    }
    if (message.complete) {
      return part;
    }
    this.pending = part;
    return undefined;
  }
}
