/**
 * Which of several server addresses (replicas of one deployment) a runtime
 * uses: ranked by rendezvous hashing of the runtime id, so that a fleet
 * spreads evenly and removing an address moves only the runtimes that
 * preferred it. A failure moves down the ranking; a whole round of failures
 * calls for the backoff; a runtime away from its first choice tries it
 * again after a jittered rebalance delay.
 *
 * @module
 */

import { createHash } from "node:crypto";

/** The rendezvous weight of `endpoint` for the runtime `id`. */
function weight(id: string, endpoint: string): bigint {
  return createHash("sha256").update(id).update(Buffer.from([0])).update(endpoint).digest().readBigUInt64BE(0);
}

/** A subscription's addresses, ranked, and where it is. */
export class Endpoints {
  private readonly ranked: string[];
  private at = 0;
  private failedInARow = 0;

  /** Ranks `endpoints` for the runtime `id`; without one, at random. */
  constructor(endpoints: readonly string[], id: string | undefined) {
    const unique = [...new Set(endpoints)].sort();
    if (id === undefined) {
      for (let i = unique.length - 1; i > 0; i--) {
        const j = Math.floor(Math.random() * (i + 1));
        [unique[i], unique[j]] = [unique[j] as string, unique[i] as string];
      }
      this.ranked = unique;
    } else {
      const weights = new Map(unique.map((endpoint) => [endpoint, weight(id, endpoint)]));
      this.ranked = unique.sort((a, b) => {
        const [wa, wb] = [weights.get(a) ?? 0n, weights.get(b) ?? 0n];
        return wa > wb ? -1 : wa < wb ? 1 : 0;
      });
    }
  }

  /** Every address, the first choice first. */
  get ranking(): readonly string[] {
    return this.ranked;
  }

  /** The address in use. */
  current(): string {
    return this.ranked[this.at] as string;
  }

  /** The runtime's first choice. */
  preferred(): string {
    return this.ranked[0] as string;
  }

  onPreferred(): boolean {
    return this.at === 0;
  }

  /** A stream stayed up a while: the next failure starts a new round. */
  settled(): void {
    this.failedInARow = 0;
  }

  movedToPreferred(): void {
    this.at = 0;
  }

  /** The address in use failed: moves to the next; whether a whole round failed. */
  failed(): boolean {
    this.at = (this.at + 1) % this.ranked.length;
    this.failedInARow += 1;
    if (this.failedInARow >= this.ranked.length) {
      this.failedInARow = 0;
      return true;
    }
    return false;
  }
}

/** How long a runtime away from its first choice waits before trying it again: the interval's second half. */
export function rebalanceDelay(intervalMs: number): number {
  return intervalMs / 2 + (intervalMs / 2) * Math.random();
}
