/**
 * The subscription's options as the session reads them: refused when the
 * subscription cannot follow them ({@link checkOptions}), then with the
 * defaults filled in; and how long a call on a connection may take.
 *
 * @module
 */

import { inspect } from "node:util";

import type { ChannelSettings } from "../connection.js";
import { cosignatureVerifier } from "../note.js";
import {
  DEFAULT_HEARTBEAT_INTERVAL_MS,
  DEFAULT_MAX_CHECKPOINT_AGE_MS,
  DEFAULT_REBALANCE_INTERVAL_MS,
  DEFAULT_REPORT_SPREAD_MS,
  type Logger,
  type SubscriptionOptions,
  type Validate,
  silent,
} from "../options.js";

/** The subscription's options with the defaults filled in. */
export interface Settings {
  endpoints: string[];
  namespace: string;
  names: string[];
  runtime: { id: string; labels: Record<string, string> } | undefined;
  cacheDir: string | undefined;
  channel: ChannelSettings;
  /** The override of the interval the server announces. */
  heartbeatIntervalMs: number | undefined;
  backoffInitialMs: number;
  backoffMaxMs: number;
  rebalanceIntervalMs: number;
  reportSpreadMs: number;
  maxCheckpointAgeMs: number | undefined;
  retryWhenRefused: boolean;
  logOrigin: string | undefined;
  witnesses: string[];
  cosignatures: number;
  validate: Validate | undefined;
  logger: Logger;
}

export function settle(options: SubscriptionOptions): Settings {
  const heartbeat = options.heartbeatIntervalMs;
  return {
    endpoints: [...options.endpoints],
    namespace: options.namespace,
    names: [...(options.names ?? [])],
    runtime: options.runtime === undefined ? undefined : { id: options.runtime.id, labels: options.runtime.labels ?? {} },
    cacheDir: options.cacheDir,
    channel: {
      tls: options.tls,
      token: options.token,
      heartbeatIntervalMs: heartbeat ?? DEFAULT_HEARTBEAT_INTERVAL_MS,
    },
    heartbeatIntervalMs: heartbeat,
    backoffInitialMs: options.backoff?.initialMs ?? 1_000,
    backoffMaxMs: options.backoff?.maxMs ?? 30_000,
    rebalanceIntervalMs: options.rebalanceIntervalMs ?? DEFAULT_REBALANCE_INTERVAL_MS,
    reportSpreadMs: options.reportSpreadMs ?? DEFAULT_REPORT_SPREAD_MS,
    maxCheckpointAgeMs:
      options.maxCheckpointAgeMs === null ? undefined : (options.maxCheckpointAgeMs ?? DEFAULT_MAX_CHECKPOINT_AGE_MS),
    retryWhenRefused: options.retryWhenRefused ?? false,
    logOrigin: options.logOrigin,
    witnesses: options.witnesses?.keys ?? [],
    cosignatures: options.witnesses?.required ?? 0,
    validate: options.validate,
    logger: options.logger ?? silent,
  };
}

/** How long a call on a connection waits for its answer: three heartbeat intervals (of at least a second). */
export function callTimeoutMs(settings: Settings): number {
  return 3 * Math.max(settings.channel.heartbeatIntervalMs, 1_000);
}

/**
 * The longest duration an option takes, in milliseconds: Node's timers take
 * no longer (a longer one fires after 1 ms, every time: a loop).
 */
export const MAX_DURATION_MS = 2_147_483_647;

/**
 * The shortest interval an option takes, in milliseconds: the server
 * counts its own in milliseconds, and a shorter one has the subscription
 * reconnect or retry in a loop.
 */
export const MIN_INTERVAL_MS = 1;

/** An error with Node's code for its kind, as Node's own arguments are refused. */
function coded<E extends Error>(error: E, code: string): E & { code: string } {
  return Object.assign(error, { code });
}

/** A `TypeError` (`ERR_INVALID_ARG_TYPE`): the option is not of the type it must be. */
function wrongType(name: string, expected: string, value: unknown): TypeError {
  return coded(
    new TypeError(`The "${name}" option must be ${expected}. Received ${inspect(value)}`),
    "ERR_INVALID_ARG_TYPE",
  );
}

/** A `RangeError` (`ERR_OUT_OF_RANGE`): the option's number is outside what it may be. */
function outOfRange(name: string, range: string, value: unknown): RangeError {
  return coded(
    new RangeError(`The value of "${name}" is out of range. It must be ${range}. Received ${inspect(value)}`),
    "ERR_OUT_OF_RANGE",
  );
}

/** A `TypeError` (`ERR_INVALID_ARG_VALUE`): the option's value cannot be followed. */
function invalidValue(name: string, reason: string, value: unknown): TypeError {
  return coded(
    new TypeError(`The "${name}" option ${reason}. Received ${inspect(value)}`),
    "ERR_INVALID_ARG_VALUE",
  );
}

/** A duration in milliseconds: a finite number within `[least, MAX_DURATION_MS]`. */
function duration(name: string, value: unknown, least: number): void {
  if (typeof value !== "number") {
    throw wrongType(name, "a number of milliseconds", value);
  }
  if (!(value >= least && value <= MAX_DURATION_MS)) {
    throw outOfRange(name, `>= ${least} && <= ${MAX_DURATION_MS}`, value);
  }
}

function optional(value: unknown, type: "string" | "function" | "boolean" | "object"): boolean {
  return value === undefined || (typeof value === type && value !== null);
}

/** A list of strings; a lone string is refused rather than taken as its characters. */
function strings(name: string, value: unknown): string[] {
  if (!Array.isArray(value) || !value.every((item) => typeof item === "string")) {
    throw wrongType(name, "an array of strings", value);
  }
  return value;
}

/**
 * An address a subscription connects to: `http://host[:port]` or
 * `https://host[:port]`, nothing else (a path would be silently dropped,
 * another scheme silently taken for plaintext).
 */
function endpoint(address: string): void {
  let url: URL | undefined;
  try {
    url = new URL(address);
  } catch {
    url = undefined;
  }
  if (
    url === undefined ||
    (url.protocol !== "http:" && url.protocol !== "https:") ||
    url.hostname === "" ||
    (url.pathname !== "" && url.pathname !== "/") ||
    url.search !== "" ||
    url.hash !== "" ||
    url.username !== "" ||
    url.password !== ""
  ) {
    throw invalidValue(
      "endpoints",
      "must hold http:// or https:// addresses (http://host:port or https://host:port)",
      address,
    );
  }
}

/**
 * Refuses options the subscription cannot follow, before anything
 * connects, naming the option and its value: a `TypeError` for one of the
 * wrong type or an address that is not `http://` or `https://`, a
 * `RangeError` for a number out of range (an interval below a millisecond,
 * such as a negative heartbeat interval, which had the subscription connect
 * and drop the stream in a loop; a backoff whose first bound is above its
 * cap; more cosignatures required than witnesses given). Each carries the
 * `code` Node gives its own such errors (`ERR_INVALID_ARG_TYPE`,
 * `ERR_INVALID_ARG_VALUE`, `ERR_OUT_OF_RANGE`).
 */
export function checkOptions(options: SubscriptionOptions): void {
  if (typeof options !== "object" || (options as unknown) === null) {
    throw wrongType("options", "an object", options);
  }
  const endpoints = strings("endpoints", options.endpoints);
  if (endpoints.length === 0) {
    throw invalidValue("endpoints", "must name at least one address", endpoints);
  }
  endpoints.forEach(endpoint);
  if (typeof options.namespace !== "string") {
    throw wrongType("namespace", "a string", options.namespace);
  }
  if (options.namespace === "") {
    throw invalidValue("namespace", "must not be empty", options.namespace);
  }
  if (options.names !== undefined) {
    strings("names", options.names);
  }
  if (options.runtime !== undefined) {
    const runtime: unknown = options.runtime;
    if (typeof runtime !== "object" || runtime === null || typeof (runtime as { id?: unknown }).id !== "string") {
      throw wrongType("runtime", "an object { id: string, labels?: Record<string, string> }", options.runtime);
    }
    if (!optional(options.runtime.labels, "object")) {
      throw wrongType("runtime.labels", "an object of strings", options.runtime.labels);
    }
  }
  if (!optional(options.cacheDir, "string")) {
    throw wrongType("cacheDir", "a string", options.cacheDir);
  }
  if (!optional(options.token, "function")) {
    throw wrongType("token", "a function that returns the token (such as tokenFile(path))", options.token);
  }
  if (!optional(options.tls, "object")) {
    throw wrongType("tls", "an object { ca, cert, key, serverName }", options.tls);
  }
  if (options.heartbeatIntervalMs !== undefined) {
    duration("heartbeatIntervalMs", options.heartbeatIntervalMs, MIN_INTERVAL_MS);
  }
  if (options.backoff !== undefined) {
    if (typeof options.backoff !== "object" || (options.backoff as unknown) === null) {
      throw wrongType("backoff", "an object { initialMs, maxMs }", options.backoff);
    }
    duration("backoff.initialMs", options.backoff.initialMs, MIN_INTERVAL_MS);
    duration("backoff.maxMs", options.backoff.maxMs, MIN_INTERVAL_MS);
    if (options.backoff.initialMs > options.backoff.maxMs) {
      throw outOfRange("backoff.initialMs", `<= backoff.maxMs (${options.backoff.maxMs})`, options.backoff.initialMs);
    }
  }
  if (options.rebalanceIntervalMs !== undefined) {
    duration("rebalanceIntervalMs", options.rebalanceIntervalMs, MIN_INTERVAL_MS);
  }
  if (options.reportSpreadMs !== undefined) {
    duration("reportSpreadMs", options.reportSpreadMs, 0);
  }
  if (options.maxCheckpointAgeMs !== undefined && options.maxCheckpointAgeMs !== null) {
    duration("maxCheckpointAgeMs", options.maxCheckpointAgeMs, MIN_INTERVAL_MS);
  }
  if (!optional(options.retryWhenRefused, "boolean")) {
    throw wrongType("retryWhenRefused", "a boolean", options.retryWhenRefused);
  }
  if (!optional(options.logOrigin, "string")) {
    throw wrongType("logOrigin", "a string", options.logOrigin);
  }
  if (options.witnesses !== undefined) {
    if (typeof options.witnesses !== "object" || (options.witnesses as unknown) === null) {
      throw wrongType("witnesses", "an object { keys, required }", options.witnesses);
    }
    const keys = strings("witnesses.keys", options.witnesses.keys);
    for (const key of keys) {
      try {
        cosignatureVerifier(key);
      } catch {
        throw invalidValue("witnesses.keys", "must hold cosignature/v1 verifier keys", key);
      }
    }
    const required: unknown = options.witnesses.required;
    if (typeof required !== "number") {
      throw wrongType("witnesses.required", "an integer", required);
    }
    if (!Number.isInteger(required) || required < 0 || required > keys.length) {
      throw outOfRange("witnesses.required", `an integer >= 0 && <= ${keys.length} (the keys given)`, required);
    }
  }
  if (!optional(options.validate, "function")) {
    throw wrongType("validate", "a function", options.validate);
  }
  if (options.logger !== undefined) {
    const logger: unknown = options.logger;
    const levels = ["debug", "info", "warn", "error"] as const;
    if (
      typeof logger !== "object" ||
      logger === null ||
      !levels.every((level) => typeof (logger as Record<string, unknown>)[level] === "function")
    ) {
      throw wrongType("logger", "an object with debug, info, warn and error functions (such as console)", logger);
    }
  }
}
