/**
 * Opening a stream on one address: the connection, the keys when none are
 * held, the reports pending, then the watch from the decided revision, with
 * the silence after which it counts as dead.
 *
 * @module
 */

import type * as grpc from "@grpc/grpc-js";

import { monotonicMs } from "../clock.js";
import {
  type BundleServiceClient,
  Failure,
  StreamReader,
  type Waker,
  connect,
  message,
  metadata,
  ready,
} from "../connection.js";
import type { WatchActiveResponse } from "../generated/policyhub/v1/WatchActiveResponse.js";
import { DEFAULT_HEARTBEAT_INTERVAL_MS, HEARTBEAT_INTERVAL_HEADER } from "../options.js";
import { Reporter } from "./reporter.js";
import { type Settings, callTimeoutMs } from "./settings.js";
import type { SubscriptionState } from "./subscription-state.js";

/** A stream open on one address, and what goes with it. */
export interface Opened {
  client: BundleServiceClient;
  reporter: Reporter;
  reader: StreamReader<WatchActiveResponse>;
  /** Three heartbeat intervals: a stream silent for longer is dead. */
  deadlineMs: number;
}

/** The heartbeat interval a watch response announced. */
function announcedHeartbeat(headers: grpc.Metadata | undefined): number | undefined {
  const value = headers?.get(HEARTBEAT_INTERVAL_HEADER)[0];
  const millis = Number(typeof value === "string" ? value : value?.toString());
  return Number.isSafeInteger(millis) && millis > 0 ? millis : undefined;
}

/**
 * Connects to `address`, fetches the keys if none are held, sends the
 * reports pending and opens the watch from the decided revision.
 */
export async function open(
  settings: Settings,
  address: string,
  state: SubscriptionState,
  waker: Waker,
  signal: AbortSignal,
): Promise<Opened> {
  const client = connect(address, settings.channel);
  const timeoutMs = Math.max(settings.channel.heartbeatIntervalMs, 1_000);
  let reporter: Reporter | undefined;
  try {
    await ready(client, address, timeoutMs);
    if (state.jwks.keys.length === 0) {
      await state.refreshKeys(client);
    }
    reporter = new Reporter(client, settings.channel.token, callTimeoutMs(settings), waker);
    await state.reports.flush(reporter);
    const stream = client.watchActive(
      {
        namespace: settings.namespace,
        names: settings.names,
        sinceRevision: state.decided,
        ...(settings.runtime === undefined ? {} : { runtime: settings.runtime }),
      },
      metadata(settings.channel.token),
    );
    const reader = new StreamReader<WatchActiveResponse>(stream, waker);
    const until = monotonicMs() + callTimeoutMs(settings);
    while (reader.headers === undefined && reader.failedEarly === undefined && monotonicMs() < until) {
      if (signal.aborted) {
        reader.cancel();
        throw new Failure("gone", "nobody listens");
      }
      await waker.wait(until);
    }
    const early = reader.failedEarly;
    if (early !== undefined || reader.headers === undefined) {
      reader.cancel();
      if (early?.kind === "error") {
        throw Failure.fromStatus(early.error);
      }
      throw new Failure("transient", early === undefined ? `${address} did not answer the watch` : "the stream ended");
    }
    const interval = settings.heartbeatIntervalMs ?? announcedHeartbeat(reader.headers) ?? DEFAULT_HEARTBEAT_INTERVAL_MS;
    return { client, reporter, reader, deadlineMs: interval * 3 };
  } catch (error) {
    reporter?.close();
    client.close();
    throw error instanceof Failure ? error : new Failure("transient", message(error), undefined, { cause: error });
  }
}
