/**
 * Reconnection delays: "full jitter" (a uniform delay between zero and a
 * bound that doubles at every attempt up to a maximum), so that a fleet that
 * lost its server does not come back in a wave.
 *
 * @module
 */

/** Full-jitter backoff. */
export class Backoff {
  private attempt = 0;

  constructor(
    private readonly initialMs: number,
    private readonly maxMs: number,
  ) {}

  /** The next delay, in milliseconds. */
  nextDelay(): number {
    const bound = Math.min(this.initialMs * 2 ** Math.min(this.attempt, 52), this.maxMs);
    this.attempt += 1;
    return bound * Math.random();
  }
}
