/**
 * Signed checkpoints: the server's word, under the key that signs bundles,
 * that at `time` its event log's hash chain ended at `chainHead`, the event
 * `lastEventId`, with revision `revision` in force. A replica cut off from
 * its database serves an ever older checkpoint, which is how a runtime
 * tells it from a current one.
 *
 * @module
 */

import { type Jwks, VerifyError, verifySignature } from "./bundle.js";
import { monotonicMs } from "./clock.js";
import { exactInteger } from "./integers.js";

/** The JWS `typ` header of every checkpoint. */
export const CHECKPOINT_TYPE = "policyhub-checkpoint+jwt";

/** What a checkpoint states. */
export interface CheckpointClaims {
  /** The revision in force. */
  revision: number;
  /** The newest event of the log (0: none yet). */
  lastEventId: number;
  /** That event's hash: the head of the chain (`""`: none yet). */
  chainHead: string;
  /** When it was signed: RFC 3339, UTC. */
  time: string;
}

/** Verifies a checkpoint offline against a JWKS; its claims and when it was signed. */
export function verifyCheckpoint(jws: string, jwks: Jwks): Promise<{ claims: CheckpointClaims; signedAt: Date }> {
  return new Promise((resolve) => {
    resolve(verifyCheckpointNow(jws, jwks));
  });
}

/** {@link verifyCheckpoint}, at once. */
function verifyCheckpointNow(jws: string, jwks: Jwks): { claims: CheckpointClaims; signedAt: Date } {
  const payload = verifySignature(jws, CHECKPOINT_TYPE, jwks);
  const { revision, lastEventId, chainHead, time } = payload;
  if (
    typeof revision !== "number" ||
    typeof lastEventId !== "number" ||
    typeof chainHead !== "string" ||
    typeof time !== "string"
  ) {
    throw new VerifyError("not a checkpoint: its claims are not of the checkpoint's types");
  }
  try {
    exactInteger("its revision", revision);
    exactInteger("its last event id", lastEventId);
  } catch (error) {
    throw new VerifyError(`not a checkpoint: ${(error as Error).message}`);
  }
  const signedAt = new Date(time);
  if (Number.isNaN(signedAt.getTime())) {
    throw new VerifyError(`not a checkpoint: time ${JSON.stringify(time)} is not a time`);
  }
  return { claims: { revision, lastEventId, chainHead, time }, signedAt };
}

/** The newest checkpoint, and whether it was found too old. */
export class Freshness {
  private newest: { claims: CheckpointClaims; signedAt: Date } | undefined;
  /** The JWS of the newest, which every message repeats until the next. */
  private newestJws = "";
  /**
   * When the newest grows too old, on the clock of the subscription's
   * deadlines ({@link monotonicMs}): its age on the wall clock (the server
   * signed it at a time of day) when it came, counted on from there.
   */
  private staleAt: number | undefined;
  private stale = false;

  /** `maxAgeMs` undefined: the check is off. */
  constructor(private readonly maxAgeMs: number | undefined) {}

  /** Whether `jws` is the newest checkpoint, verified already. */
  holds(jws: string): boolean {
    return jws !== "" && this.newestJws === jws;
  }

  /**
   * Takes a verified checkpoint (an older one than held changes nothing);
   * the revision and time when it ends a stale spell.
   */
  observe(claims: CheckpointClaims, signedAt: Date, jws: string): { revision: number; signedAt: Date } | undefined {
    if (this.newest !== undefined && this.newest.signedAt >= signedAt) {
      return undefined;
    }
    this.newest = { claims, signedAt };
    this.newestJws = jws;
    const ageMs = Math.max(0, Date.now() - signedAt.getTime());
    this.staleAt = this.maxAgeMs === undefined ? undefined : monotonicMs() + Math.max(0, this.maxAgeMs - ageMs);
    const fresh = this.maxAgeMs === undefined || ageMs < this.maxAgeMs;
    if (this.stale && fresh) {
      this.stale = false;
      return { revision: claims.revision, signedAt };
    }
    return undefined;
  }

  /**
   * When the newest checkpoint grows too old, on the clock of the
   * subscription's deadlines ({@link monotonicMs}); undefined when the
   * check is off, none came yet, or it is stale already.
   */
  deadline(): number | undefined {
    if (this.newest === undefined || this.stale) {
      return undefined;
    }
    return this.staleAt;
  }

  /** Marks the newest checkpoint stale: what the event says. */
  expire(): { revision: number; signedAt: Date; ageMs: number } {
    this.stale = true;
    const newest = this.newest;
    if (newest === undefined) {
      throw new Error("only a held checkpoint expires");
    }
    return {
      revision: newest.claims.revision,
      signedAt: newest.signedAt,
      ageMs: Date.now() - newest.signedAt.getTime(),
    };
  }

  /** Why a stale checkpoint ends a connection. */
  describe(): string {
    if (this.newest === undefined) {
      return "no checkpoint yet";
    }
    const { claims } = this.newest;
    if (this.stale && this.maxAgeMs !== undefined) {
      return (
        `the server's newest checkpoint (revision ${claims.revision}, signed ${claims.time}) is older ` +
        `than ${this.maxAgeMs} ms: its replica may be cut off from its database`
      );
    }
    return `checkpoint of revision ${claims.revision} signed ${claims.time}`;
  }
}
