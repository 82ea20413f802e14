/**
 * The server's 64-bit integers (revisions, the sizes and indexes of its
 * log) as JavaScript numbers, exactly or not at all. A number holds every
 * integer up to 2^53 − 1 (`Number.MAX_SAFE_INTEGER`) and rounds the ones
 * above, so that two revisions could compare equal, a resume start from
 * the wrong one, or a state go backwards unseen. gRPC's messages come with
 * their 64-bit integers as decimal strings (the loader's `longs: String`),
 * read here, at the boundary; an integer of JSON (a checkpoint's claims, the
 * cache) is a number already, refused when it is not a safe one.
 *
 * @module
 */

import { inspect } from "node:util";

/** The largest integer a number holds exactly, 2^53 − 1. */
export const MAX_EXACT_INTEGER = Number.MAX_SAFE_INTEGER;

/**
 * `value`, a non-negative integer that `what` names, as a number; a
 * `RangeError` naming it when it is beyond 2^53 − 1, a `TypeError` when it
 * is no whole number.
 */
export function exactInteger(what: string, value: unknown): number {
  const whole =
    (typeof value === "string" && /^(0|[1-9][0-9]*)$/u.test(value)) ||
    (typeof value === "number" && Number.isInteger(value) && value >= 0);
  if (!whole) {
    throw new TypeError(`${what} ${inspect(value)} is not a whole number`);
  }
  const number = Number(value);
  if (!Number.isSafeInteger(number)) {
    throw new RangeError(
      `${what} ${String(value)} is beyond 2^53 − 1 (${MAX_EXACT_INTEGER}), the largest integer this runtime holds exactly`,
    );
  }
  return number;
}
