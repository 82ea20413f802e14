/**
 * The public face: a {@link Subscription} to a namespace (or some of its
 * policies), taken as an async iterator of {@link Event}s or with a
 * callback. The options it takes are in `options`, how it stops for good
 * in `errors`.
 *
 * @module
 */

import type { SubscriptionOptions } from "./options.js";
import { drive } from "./session/drive.js";
import { checkOptions } from "./session/settings.js";
import type { Event } from "./state.js";

/** A subscription to a namespace of a policyhub server. */
export class Subscription {
  /**
   * Takes what to follow and how. Options it cannot follow are refused here,
   * before anything connects, with the option and its value in the message:
   * a `TypeError` for one of the wrong type or an address that is not
   * `http://` or `https://` (`code` `ERR_INVALID_ARG_TYPE` or
   * `ERR_INVALID_ARG_VALUE`), a `RangeError` for a number out of range
   * (`ERR_OUT_OF_RANGE`): a duration below a millisecond (`reportSpreadMs`
   * may be 0) or above Node's timers' 2147483647, a backoff whose
   * `initialMs` is above its `maxMs`, more witnesses required than given.
   */
  constructor(readonly options: SubscriptionOptions) {
    checkOptions(options);
  }

  /**
   * Follows the namespace until `signal` aborts, calling `onEvent` with
   * each event (awaited when it returns a promise); resolves once stopped,
   * rejects with a {@link WatchError} when the subscription stops for good,
   * or with what `onEvent` threw, which stops it too.
   */
  async watch(onEvent: (event: Event) => void | Promise<void>, signal?: AbortSignal): Promise<void> {
    const { controller, unlink } = linked(signal);
    try {
      if (!controller.signal.aborted) {
        await drive(this.options, onEvent, controller.signal);
      }
    } finally {
      unlink();
      controller.abort();
    }
  }

  /**
   * The events as an async iterator; leaving the loop (or `signal`
   * aborting) stops the subscription. A {@link WatchError} is thrown when
   * it stops for good.
   *
   * Nothing connects before the loop asks for its first event, and one
   * event at most waits for the loop (as the Python SDK's queue of one):
   * the subscription goes on once the loop took it, so a loop slower than
   * the server holds the subscription back rather than piling events up.
   */
  events(signal?: AbortSignal): AsyncIterableIterator<Event> {
    // Once the loop asked for a first event: what stops the subscription.
    let following: ReturnType<typeof linked> | undefined;
    let closed = false;
    // The event that waits for the loop, and who waits for what.
    let queued: Event | undefined;
    let loopWaits: (() => void) | undefined;
    let sessionWaits: (() => void) | undefined;
    let ended = false;
    let failure: Error | undefined;
    const wakeLoop = (): void => {
      const resume = loopWaits;
      loopWaits = undefined;
      resume?.();
    };
    const wakeSession = (): void => {
      const resume = sessionWaits;
      sessionWaits = undefined;
      resume?.();
    };
    const follow = (): ReturnType<typeof linked> => {
      const link = linked(signal);
      const stopped = link.controller.signal;
      stopped.addEventListener(
        "abort",
        () => {
          wakeLoop();
          wakeSession();
        },
        { once: true },
      );
      const emit = async (event: Event): Promise<void> => {
        while (queued !== undefined && !stopped.aborted) {
          await new Promise<void>((resolve) => {
            sessionWaits = resolve;
          });
        }
        if (!stopped.aborted) {
          queued = event;
          wakeLoop();
        }
      };
      drive(this.options, emit, stopped)
        .then(
          () => {
            ended = true;
          },
          (error: unknown) => {
            ended = true;
            failure = error instanceof Error ? error : new Error(String(error));
          },
        )
        .finally(() => {
          link.unlink();
          wakeLoop();
        });
      return link;
    };
    const iterator: AsyncIterableIterator<Event> = {
      async next(): Promise<IteratorResult<Event>> {
        if (following === undefined) {
          if (closed || signal?.aborted === true) {
            closed = true;
            return { value: undefined, done: true };
          }
          following = follow();
        }
        const stopped = following.controller.signal;
        for (;;) {
          const event = queued;
          if (event !== undefined) {
            queued = undefined;
            wakeSession();
            return { value: event, done: false };
          }
          if (ended) {
            if (failure !== undefined) {
              const error = failure;
              failure = undefined;
              throw error;
            }
            return { value: undefined, done: true };
          }
          if (stopped.aborted) {
            return { value: undefined, done: true };
          }
          await new Promise<void>((resolve) => {
            loopWaits = resolve;
          });
        }
      },
      return(): Promise<IteratorResult<Event>> {
        closed = true;
        following?.unlink();
        following?.controller.abort();
        return Promise.resolve({ value: undefined, done: true });
      },
      [Symbol.asyncIterator]() {
        return iterator;
      },
    };
    return iterator;
  }
}

/**
 * A controller of the subscription's own that aborts when `signal` does (at
 * once when it has), and `unlink`, which stops listening to `signal`: an
 * application's signal outlives many subscriptions, and a listener left on
 * it would keep each one's machinery alive.
 */
function linked(signal: AbortSignal | undefined): { controller: AbortController; unlink: () => void } {
  const controller = new AbortController();
  const abort = (): void => {
    controller.abort();
  };
  if (signal?.aborted === true) {
    controller.abort();
  } else {
    signal?.addEventListener("abort", abort, { once: true });
  }
  return {
    controller,
    unlink: () => {
      signal?.removeEventListener("abort", abort);
    },
  };
}
