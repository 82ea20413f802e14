/**
 * The public face: a {@link Subscription} to a namespace (or some of its
 * policies), taken as an async iterator of {@link Event}s or with a
 * callback, and the settings it takes.
 *
 * @module
 */

import type { TlsOptions } from "./connection.js";
import { drive } from "./session/drive.js";
import { checkOptions } from "./session/settings.js";
import type { Event, State } from "./state.js";
import type { TokenSource } from "./token.js";

/**
 * The application's verdict on each new whole state, before it is put in
 * force: return nothing to apply it; return a reason (or throw) to refuse
 * it: the refusal is reported REJECTED with the reason, and the previous
 * state stays in force. It may take its time (write files, reload a
 * process): the subscription waits for it.
 */
export type Validate = (state: State) => string | undefined | Promise<string | undefined>;

/** The response header in which the server announces its heartbeat interval, in milliseconds. */
export const HEARTBEAT_INTERVAL_HEADER = "policyhub-heartbeat-interval-ms";
/** The heartbeat interval assumed of a server that does not say it. */
export const DEFAULT_HEARTBEAT_INTERVAL_MS = 10_000;
/** The window over which a runtime spreads its reports unless told otherwise. */
export const DEFAULT_REPORT_SPREAD_MS = 1_000;
/** How long a runtime away from its first choice of several addresses waits, at most, before trying it again. */
export const DEFAULT_REBALANCE_INTERVAL_MS = 60_000;
/** How old the server's newest checkpoint may grow unless told otherwise. */
export const DEFAULT_MAX_CHECKPOINT_AGE_MS = 600_000;

/** What one subscription follows and how. */
export interface SubscriptionOptions {
  /**
   * The server's addresses (`http://host:port`, `https://host:port`):
   * replicas of one deployment. The runtime id ranks them (rendezvous
   * hashing); a failure moves to the next, and the runtime drifts back to
   * its first choice once it answers again.
   */
  endpoints: string[];
  /** The namespace followed. */
  namespace: string;
  /** Only these policies; empty or absent: every policy of the namespace. */
  names?: string[];
  /** The runtime's identity in the fleet view: with it, outcomes are reported APPLIED or REJECTED. */
  runtime?: { id: string; labels?: Record<string, string> };
  /** Where the last-known-good state is kept; absent: no cache. */
  cacheDir?: string;
  /** The bearer token of every call, asked of it on every call (see {@link tokenFile}, which reads its file when it changed). */
  token?: TokenSource;
  /** TLS (and mTLS) to the server. */
  tls?: TlsOptions;
  /** The heartbeat interval to expect, overriding the one the server announces. */
  heartbeatIntervalMs?: number;
  /** Reconnection backoff bounds, in milliseconds (default 1 s, doubling up to 30 s; full jitter). */
  backoff?: { initialMs: number; maxMs: number };
  /** With several endpoints: the longest wait before trying the first choice again. */
  rebalanceIntervalMs?: number;
  /** Reports go out at a random moment in the second half of this window after an outcome; 0: at once. */
  reportSpreadMs?: number;
  /** How old the server's newest signed checkpoint may be; `null`: not checked. */
  maxCheckpointAgeMs?: number | null;
  /** Keep the subscription going (with backoff) when the server refuses its credentials, such as a token rotated late. */
  retryWhenRefused?: boolean;
  /** Pin the server's log by its origin; absent: the first one verified. */
  logOrigin?: string;
  /** Witness verifier keys (`<name>+<key id>+<base64 key>`) and how many of them must cosign a checkpoint. */
  witnesses?: { keys: string[]; required: number };
  /** The application's check of each new state. */
  validate?: Validate;
}

/** Why a subscription stopped for good. */
export class WatchError extends Error {
  override name = "WatchError";

  constructor(
    /** `refused`: the server refused the subscription itself; `config`: it is misconfigured. */
    readonly kind: "refused" | "config",
    message: string,
    /** The gRPC status code of a refusal. */
    readonly code?: number,
  ) {
    super(message);
  }
}

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
