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
    const controller = new AbortController();
    const abort = (): void => {
      controller.abort();
    };
    signal?.addEventListener("abort", abort, { once: true });
    try {
      await drive(this.options, onEvent, controller.signal);
    } finally {
      signal?.removeEventListener("abort", abort);
      controller.abort();
    }
  }

  /**
   * The events as an async iterator; leaving the loop (or `signal`
   * aborting) stops the subscription. A {@link WatchError} is thrown when
   * it stops for good.
   */
  events(signal?: AbortSignal): AsyncIterableIterator<Event> {
    const controller = new AbortController();
    signal?.addEventListener(
      "abort",
      () => {
        controller.abort();
      },
      { once: true },
    );
    const queue: Event[] = [];
    let waiting: (() => void) | undefined;
    let ended = false;
    let failure: Error | undefined;
    const wake = (): void => {
      const resume = waiting;
      waiting = undefined;
      resume?.();
    };
    drive(
      this.options,
      (event) => {
        queue.push(event);
        wake();
      },
      controller.signal,
    ).then(
      () => {
        ended = true;
        wake();
      },
      (error: unknown) => {
        ended = true;
        failure = error instanceof Error ? error : new Error(String(error));
        wake();
      },
    );
    const iterator: AsyncIterableIterator<Event> = {
      async next(): Promise<IteratorResult<Event>> {
        for (;;) {
          const event = queue.shift();
          if (event !== undefined) {
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
          if (controller.signal.aborted) {
            return { value: undefined, done: true };
          }
          await new Promise<void>((resolve) => {
            waiting = resolve;
          });
        }
      },
      return(): Promise<IteratorResult<Event>> {
        controller.abort();
        return Promise.resolve({ value: undefined, done: true });
      },
      [Symbol.asyncIterator]() {
        return iterator;
      },
    };
    controller.signal.addEventListener("abort", wake, { once: true });
    return iterator;
  }
}
