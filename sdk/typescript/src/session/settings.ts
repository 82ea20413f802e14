/**
 * The subscription's options as the session reads them, with the defaults
 * filled in, and how long a call on a connection may take.
 *
 * @module
 */

import type { ChannelSettings } from "../connection.js";
import {
  DEFAULT_HEARTBEAT_INTERVAL_MS,
  DEFAULT_MAX_CHECKPOINT_AGE_MS,
  DEFAULT_REBALANCE_INTERVAL_MS,
  DEFAULT_REPORT_SPREAD_MS,
  type SubscriptionOptions,
  type Validate,
} from "../subscription.js";

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
  };
}

/** How long a call on a connection waits for its answer: three heartbeat intervals (of at least a second). */
export function callTimeoutMs(settings: Settings): number {
  return 3 * Math.max(settings.channel.heartbeatIntervalMs, 1_000);
}
