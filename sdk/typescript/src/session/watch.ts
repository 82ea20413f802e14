/**
 * One session: a watch stream followed until it fails. Its messages are
 * put together into whole revisions and decided, their checkpoints
 * checked; between messages it sends the reports due, notices a stale
 * checkpoint or three missed heartbeats, and moves back to the runtime's
 * first choice of address once that one answers.
 *
 * @module
 */

import { monotonicMs } from "../clock.js";
import { Failure, type Waker, message } from "../connection.js";
import { type Endpoints, rebalanceDelay } from "../endpoints.js";
import { Assembler, type Revision, type Say, type WatchMessage, readMessage } from "../state.js";
import { open } from "./open.js";
import { reportDelay } from "./reporter.js";
import type { Settings } from "./settings.js";
import type { SubscriptionState } from "./subscription-state.js";

/** One connection's life; it ends only by failing (or a stop). */
export async function session(
  settings: Settings,
  endpoints: Endpoints,
  state: SubscriptionState,
  say: Say,
  waker: Waker,
  signal: AbortSignal,
): Promise<void> {
  let opened = await open(settings, endpoints.current(), state, waker, signal);
  const nextRebalance = (): number | undefined =>
    endpoints.onPreferred() ? undefined : monotonicMs() + rebalanceDelay(settings.rebalanceIntervalMs);
  try {
    await say({ type: "connected", revision: state.decided, endpoint: endpoints.current() });
    let lastMessageAt = monotonicMs();
    let rebalanceAt = nextRebalance();
    let assembler = new Assembler();
    // When the outcomes decided since the last report go out.
    let reportAt: number | undefined;
    for (;;) {
      if (signal.aborted) {
        return;
      }
      const item = opened.reader.take();
      if (item !== undefined) {
        lastMessageAt = monotonicMs();
        if (item.kind === "error") {
          throw Failure.fromStatus(item.error);
        }
        if (item.kind === "end") {
          throw new Failure("transient", "the stream ended");
        }
        let received: WatchMessage;
        try {
          received = readMessage(item.message);
        } catch (error) {
          // A message that cannot be read, as one too large or malformed.
          throw new Failure("transient", message(error));
        }
        const revokedSigner = state.signedByRevoked(received.bundles) !== undefined;
        if (received.checkpoint !== null && !revokedSigner) {
          const restored = await state.history.followTree(received.checkpoint, opened.client);
          if (restored !== undefined) {
            await say(restored);
            if (received.kind !== "WATCH_EVENT_KIND_SNAPSHOT") {
              // The stream resumed from a cursor of the history left
              // behind, so what the restored server took up to that
              // revision would never come: the restored server is taken
              // whole, from a snapshot on a stream opened anew.
              state.decided = 0;
              const reopened = await open(settings, endpoints.current(), state, waker, signal);
              opened.reader.cancel();
              opened.reporter.close();
              opened.client.close();
              opened = reopened;
              lastMessageAt = monotonicMs();
              assembler = new Assembler();
              continue;
            }
          }
          const fresh = await state.history.checkpoint(received.checkpoint, opened.client);
          if (fresh !== undefined) await say(fresh);
        }
        let revision: Revision | undefined;
        try {
          revision = assembler.push(received);
        } catch (error) {
          throw new Failure("transient", message(error));
        }
        if (revision === undefined) {
          continue;
        }
        const event = await state.decide(revision, opened.client);
        if (event !== undefined) await say(event);
        if (settings.reportSpreadMs === 0) {
          await state.reports.flush(opened.reporter);
        } else if (reportAt === undefined && state.reports.pending()) {
          reportAt = monotonicMs() + reportDelay(settings.reportSpreadMs);
        }
        continue;
      }
      const now = monotonicMs();
      const silentUntil = lastMessageAt + opened.deadlineMs;
      if (now >= silentUntil) {
        throw new Failure("transient", `no message for ${opened.deadlineMs} ms, three heartbeats`);
      }
      if (reportAt !== undefined && now >= reportAt) {
        reportAt = undefined;
        await state.reports.flush(opened.reporter);
        continue;
      }
      const staleAt = state.history.freshness.deadline();
      if (staleAt !== undefined && now >= staleAt) {
        await say({ type: "checkpointStale", ...state.history.freshness.expire() });
        throw new Failure("transient", state.history.freshness.describe());
      }
      if (rebalanceAt !== undefined && now >= rebalanceAt) {
        // The stream in use stays until the one on the first choice is
        // open; a first choice that does not answer is tried again later.
        const preferred = endpoints.preferred();
        try {
          const moved = await open(settings, preferred, state, waker, signal);
          opened.reader.cancel();
          opened.reporter.close();
          opened.client.close();
          opened = moved;
          endpoints.movedToPreferred();
          settings.logger.info(`moved back to the preferred server ${preferred}`);
          lastMessageAt = monotonicMs();
          // Parts of a revision not yet whole come again, whole, on the
          // new stream, which resumes from the decided one.
          assembler = new Assembler();
          rebalanceAt = undefined;
          await say({ type: "connected", revision: state.decided, endpoint: preferred });
        } catch (error) {
          if (error instanceof Failure && error.kind === "gone") {
            throw error;
          }
          settings.logger.debug(`the preferred server ${preferred} does not answer yet: ${message(error)}`);
          rebalanceAt = nextRebalance();
        }
        continue;
      }
      const wakeAt = Math.min(silentUntil, reportAt ?? Infinity, staleAt ?? Infinity, rebalanceAt ?? Infinity);
      await waker.wait(wakeAt);
    }
  } finally {
    opened.reader.cancel();
    opened.reporter.close();
    opened.client.close();
  }
}
