/**
 * The clock of every deadline a subscription keeps.
 *
 * @module
 */

/**
 * Milliseconds on a monotonic clock (`performance.now()`): a step of the
 * wall clock (NTP correcting it, a virtual machine resumed) neither cuts a
 * wait short, such as three heartbeats of silence, nor stretches it by the
 * step. `Date.now()` stays for times of day: when a state was verified, how
 * old a checkpoint the server signed is.
 */
export function monotonicMs(): number {
  return performance.now();
}
