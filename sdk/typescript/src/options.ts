/**
 * What a subscription takes: its options, the application's
 * validation and the defaults. A module of its own, which the public face
 * and the session both read, so that the session depends on none of the
 * public face.
 *
 * @module
 */

import type { TlsOptions } from "./connection.js";
import type { State } from "./state.js";
import type { TokenSource } from "./token.js";

/**
 * The application's verdict on each new whole state, before it is put in
 * force: return nothing to apply it; return a reason (or throw) to refuse
 * it: the refusal is reported REJECTED with the reason, and the previous
 * state stays in force. It may take its time (write files, reload a
 * process): the subscription waits for it.
 */
export type Validate = (state: State) => string | undefined | Promise<string | undefined>;

/**
 * What the subscription logs to, as LaunchDarkly's `LDLogger`: each level
 * takes one message, a lowercase sentence with what it concerns in it.
 */
export interface Logger {
  debug(message: string): void;
  info(message: string): void;
  warn(message: string): void;
  error(message: string): void;
}

/** A logger that says nothing: the default. */
export const silent: Logger = {
  debug: () => undefined,
  info: () => undefined,
  warn: () => undefined,
  error: () => undefined,
};

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
  /** TLS (and mTLS) to `https://` servers; an `http://` address stays plaintext. */
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
  /**
   * Where the subscription says what it does (a stream lost, a state
   * rejected, a cache it cannot write): any object with `debug`, `info`,
   * `warn` and `error`, such as `console` or a pino or winston logger.
   * Absent: it says nothing.
   */
  logger?: Logger;
}
