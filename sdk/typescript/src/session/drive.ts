/**
 * The machinery behind a {@link Subscription}: connect, resume, verify,
 * decide whole states, report, and say what happened as events.
 *
 * ```text
 *   start ── cache? ──> fromCache (verified again, validated)
 *     │
 *     v
 *   connect ──> fetch JWKS ──> WatchActive(since = decided revision) ──> connected
 *     ^                              │ parts ──> whole revision
 *     │                              │   verify every bundle, validate ──> applied / rejected
 *     │                              │   report APPLIED / REJECTED
 *     └── next address; full-jitter <┘ any failure: UNAVAILABLE, reset,
 *         backoff after a whole round  a bad message, 3 missed heartbeats
 *         disconnected
 * ```
 *
 * It resumes from the last revision it *decided* on, applied or rejected,
 * so a rejected version is not sent again in a loop; it applies a state
 * only when its revision is newer than the applied one (unless the server
 * says `reset`), so it never goes backwards. A declared restore taken on a
 * stream resumed from the old history's cursor opens the stream anew from
 * revision 0: the restored server is taken whole. Nothing the server sends ends
 * the subscription but a refusal of the subscription itself: a message
 * that does not verify is a rejection, one that cannot be read a lost
 * stream, and the state in force stays.
 *
 * Here is the loop of sessions and backoff; `open` opens a stream on one
 * address, `watch` follows it until it fails, `subscription-state` keeps
 * what outlives a session and decides each revision, `history` checks the
 * checkpoints and the server's tree, `reporter` sends the outcomes and
 * `settings` fills in the subscription's defaults.
 *
 * @module
 */

import { Backoff } from "../backoff.js";
import { monotonicMs } from "../clock.js";
import { Failure, Waker, message, refusesCredentials } from "../connection.js";
import { Endpoints } from "../endpoints.js";
import { WatchError } from "../errors.js";
import type { SubscriptionOptions } from "../options.js";
import type { Event, Say } from "../state.js";
import { Telemetry } from "../telemetry.js";
import { settle } from "./settings.js";
import { SubscriptionState } from "./subscription-state.js";
import { session } from "./watch.js";

/** How often the token is read again while the server refuses it. */
const TOKEN_POLL_MS = 500;

/** Whether the subscription was stopped: read anew after every wait. */
function stopped(signal: AbortSignal): boolean {
  return signal.aborted;
}

/**
 * Follows the subscription until `signal` aborts (resolves) or it fails for
 * good (rejects with a {@link WatchError}), calling `emit` with every event.
 */
export async function drive(
  options: SubscriptionOptions,
  emit: (event: Event) => void | Promise<void>,
  signal: AbortSignal,
): Promise<void> {
  const settings = settle(options);
  if (settings.endpoints.length === 0) {
    throw new WatchError("config", "the subscription names no endpoint");
  }
  const say: Say = async (event) => {
    if (signal.aborted) {
      throw new Failure("gone", "nobody listens");
    }
    try {
      await emit(event);
    } catch (error) {
      throw new ListenerError(error);
    }
  };
  const waker = new Waker(signal);
  const telemetry = new Telemetry(settings.namespace);
  const endpoints = new Endpoints(settings.endpoints, settings.runtime?.id);
  const state = new SubscriptionState(settings, telemetry);
  const freshBackoff = (): Backoff => new Backoff(settings.backoffInitialMs, settings.backoffMaxMs);
  let backoff = freshBackoff();
  try {
    await state.start(say);
    for (;;) {
      const started = monotonicMs();
      let failure: Failure;
      try {
        await session(settings, endpoints, state, say, waker, signal);
        failure = new Failure("gone", "nobody listens");
      } catch (error) {
        if (error instanceof ListenerError) {
          throw error.thrown;
        }
        failure = error instanceof Failure ? error : new Failure("transient", message(error), undefined, { cause: error });
      }
      if (failure.kind === "gone" || signal.aborted) {
        return;
      }
      const refused =
        failure.kind === "permanent" && settings.retryWhenRefused && refusesCredentials(failure.code);
      if (failure.kind === "permanent" && !refused) {
        throw new WatchError("refused", `the server refused the watch: ${failure.message}`, failure.code, causeOf(failure));
      }
      if (failure.kind === "config") {
        throw new WatchError("config", failure.message, undefined, causeOf(failure));
      }
      // A stream that stayed up a while starts the backoff over; every
      // reconnection is still jittered.
      if (monotonicMs() - started > settings.backoffMaxMs) {
        backoff = freshBackoff();
        endpoints.settled();
      }
      // The next address after a jittered wait within the backoff's first
      // bound; once every one failed in a row, after the doubling backoff.
      const failedOn = endpoints.current();
      const retryInMs = endpoints.failed() ? backoff.nextDelay() : settings.backoffInitialMs * Math.random();
      const refusedToken = refused ? settings.channel.token?.() : undefined;
      telemetry.disconnected();
      const { logger } = settings;
      const inMs = Math.round(retryInMs);
      if (failure.kind === "history") {
        logger.error(`refusing the server's history; the state in force stays, retrying in ${inMs} ms: ${failure.message}`);
        const verifiedSize = state.history.verifiedSize();
        await say({ type: "historyRefused", reason: failure.message, verifiedSize, retryInMs });
      } else if (refused) {
        logger.warn(`the server refused the credentials; retrying in ${inMs} ms: ${failure.message}`);
        await say({ type: "refused", reason: failure.message, retryInMs });
      } else {
        logger.warn(
          `watch on ${failedOn} interrupted (${failure.message}); resuming from revision ${state.decided} ` +
            `on ${endpoints.current()} in ${inMs} ms`,
        );
        await say({ type: "disconnected", reason: failure.message, retryInMs, revision: state.decided });
      }
      const until = monotonicMs() + retryInMs;
      while (!stopped(signal) && monotonicMs() < until) {
        const stale = state.history.freshness.deadline();
        if (stale !== undefined && monotonicMs() >= stale) {
          await say({ type: "checkpointStale", ...state.history.freshness.expire() });
          continue;
        }
        // A refused token: another one (a rotated token file) is tried at once.
        if (refused && settings.channel.token !== undefined && settings.channel.token() !== refusedToken) {
          break;
        }
        const poll = refused ? monotonicMs() + TOKEN_POLL_MS : until;
        await waker.wait(Math.min(until, poll, stale ?? until));
      }
      if (stopped(signal)) {
        return;
      }
    }
  } catch (error) {
    if (error instanceof Failure && error.kind === "gone") {
      return;
    }
    throw error instanceof ListenerError ? error.thrown : error;
  }
}

/** The cause a failure carries on to the error that ends the subscription (gRPC's error), if any. */
function causeOf(failure: Failure): ErrorOptions | undefined {
  return failure.cause === undefined ? undefined : { cause: failure.cause };
}

/** What the application's event handler threw: it ends the subscription, thrown as it was. */
class ListenerError extends Error {
  constructor(readonly thrown: unknown) {
    super("the event handler threw");
  }
}
