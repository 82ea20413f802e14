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
 * @module
 */

import type * as grpc from "@grpc/grpc-js";
import { status as grpcStatus } from "@grpc/grpc-js";

import { Backoff } from "./backoff.js";
import { type Jwks, keyId, knows, verifyEnvelope } from "./bundle.js";
import { Cache } from "./cache.js";
import { Freshness, verifyCheckpoint } from "./checkpoint.js";
import {
  type BundleServiceClient,
  type ChannelSettings,
  Failure,
  StreamReader,
  Waker,
  connect,
  fetchKeys,
  metadata,
  ready,
  refusesCredentials,
  unary,
} from "./connection.js";
import { Endpoints, rebalanceDelay } from "./endpoints.js";
import type { Bundle } from "./generated/policyhub/v1/Bundle.js";
import type { Checkpoint } from "./generated/policyhub/v1/Checkpoint.js";
import type { GetConsistencyProofResponse } from "./generated/policyhub/v1/GetConsistencyProofResponse.js";
import type { GetRestoreProofResponse } from "./generated/policyhub/v1/GetRestoreProofResponse.js";
import type { PolicyApplyStatus } from "./generated/policyhub/v1/PolicyApplyStatus.js";
import type { ReportStatusRequest } from "./generated/policyhub/v1/ReportStatusRequest.js";
import type { ReportStatusResponse } from "./generated/policyhub/v1/ReportStatusResponse.js";
import type { WatchActiveResponse } from "./generated/policyhub/v1/WatchActiveResponse.js";
import { Assembler, type Event, type Revision, type State, type VerifiedBundle } from "./state.js";
import {
  DEFAULT_HEARTBEAT_INTERVAL_MS,
  DEFAULT_MAX_CHECKPOINT_AGE_MS,
  DEFAULT_REBALANCE_INTERVAL_MS,
  DEFAULT_REPORT_SPREAD_MS,
  HEARTBEAT_INTERVAL_HEADER,
  type SubscriptionOptions,
  type Validate,
  WatchError,
} from "./subscription.js";
import { Telemetry } from "./telemetry.js";
import { Remembered, type TreeHead, verifyNote as verifyNote } from "./tree.js";


/** How often the token is read again while the server refuses it. */
const TOKEN_POLL_MS = 500;

/** How long after an outcome a runtime reports it: a random moment in the spread's second half. */
export function reportDelay(spreadMs: number): number {
  return spreadMs / 2 + (spreadMs / 2) * Math.random();
}

/** The subscription's options with the defaults filled in. */
interface Settings {
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

function settle(options: SubscriptionOptions): Settings {
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

/** Whether the subscription was stopped: read anew after every wait. */
function stopped(signal: AbortSignal): boolean {
  return signal.aborted;
}

function message(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

/** The application's verdict: undefined accepts, a reason refuses. */
async function check(validate: Validate | undefined, state: State): Promise<string | undefined> {
  if (validate === undefined) {
    return undefined;
  }
  try {
    const verdict = await validate(state);
    return typeof verdict === "string" ? verdict : undefined;
  } catch (error) {
    return message(error) || "the application refused the state";
  }
}

/** Says events; a stop makes it throw the `gone` failure. */
type Say = (event: Event) => Promise<void>;

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
      const started = Date.now();
      let failure: Failure;
      try {
        await session(settings, endpoints, state, say, waker, signal);
        failure = new Failure("gone", "nobody listens");
      } catch (error) {
        if (error instanceof ListenerError) {
          throw error.thrown;
        }
        failure = error instanceof Failure ? error : new Failure("transient", message(error));
      }
      if (failure.kind === "gone" || signal.aborted) {
        return;
      }
      const refused =
        failure.kind === "permanent" && settings.retryWhenRefused && refusesCredentials(failure.code);
      if (failure.kind === "permanent" && !refused) {
        throw new WatchError("refused", `the server refused the watch: ${failure.message}`, failure.code);
      }
      if (failure.kind === "config") {
        throw new WatchError("config", failure.message);
      }
      // A stream that stayed up a while starts the backoff over; every
      // reconnection is still jittered.
      if (Date.now() - started > settings.backoffMaxMs) {
        backoff = freshBackoff();
        endpoints.settled();
      }
      // The next address after a jittered wait within the backoff's first
      // bound; once every one failed in a row, after the doubling backoff.
      const retryInMs = endpoints.failed() ? backoff.nextDelay() : settings.backoffInitialMs * Math.random();
      const refusedToken = refused ? settings.channel.token?.() : undefined;
      telemetry.disconnected();
      if (failure.kind === "history") {
        await say({ type: "historyRefused", reason: failure.message, verifiedSize: state.verifiedSize(), retryInMs });
      } else if (refused) {
        await say({ type: "refused", reason: failure.message, retryInMs });
      } else {
        await say({ type: "disconnected", reason: failure.message, retryInMs, revision: state.decided });
      }
      const until = Date.now() + retryInMs;
      while (!stopped(signal) && Date.now() < until) {
        const stale = state.freshness.deadline();
        if (stale !== undefined && Date.now() >= stale) {
          await say({ type: "checkpointStale", ...state.freshness.expire() });
          continue;
        }
        // A refused token: another one (a rotated token file) is tried at once.
        if (refused && settings.channel.token !== undefined && settings.channel.token() !== refusedToken) {
          break;
        }
        const poll = refused ? Date.now() + TOKEN_POLL_MS : until;
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

/** What the application's event handler threw: it ends the subscription, thrown as it was. */
class ListenerError extends Error {
  constructor(readonly thrown: unknown) {
    super("the event handler threw");
  }
}

/** A stream open on one address, and what goes with it. */
interface Opened {
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
async function open(
  settings: Settings,
  address: string,
  state: SubscriptionState,
  waker: Waker,
  signal: AbortSignal,
): Promise<Opened> {
  const client = connect(address, settings.channel);
  const timeoutMs = Math.max(settings.channel.heartbeatIntervalMs, 1_000);
  const callTimeoutMs = 3 * timeoutMs;
  let reporter: Reporter | undefined;
  try {
    await ready(client, address, timeoutMs);
    if (state.jwks.keys.length === 0) {
      await state.refreshKeys(client);
    }
    reporter = new Reporter(client, settings.channel.token, callTimeoutMs, waker);
    await state.flushReports(reporter);
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
    const until = Date.now() + callTimeoutMs;
    while (reader.headers === undefined && reader.failedEarly === undefined && Date.now() < until) {
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
    throw error instanceof Failure ? error : new Failure("transient", message(error));
  }
}

/** One connection's life; it ends only by failing (or a stop). */
async function session(
  settings: Settings,
  endpoints: Endpoints,
  state: SubscriptionState,
  say: Say,
  waker: Waker,
  signal: AbortSignal,
): Promise<void> {
  let opened = await open(settings, endpoints.current(), state, waker, signal);
  const nextRebalance = (): number | undefined =>
    endpoints.onPreferred() ? undefined : Date.now() + rebalanceDelay(settings.rebalanceIntervalMs);
  try {
    await say({ type: "connected", revision: state.decided, endpoint: endpoints.current() });
    let lastMessageAt = Date.now();
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
        lastMessageAt = Date.now();
        if (item.kind === "error") {
          throw Failure.fromStatus(item.error);
        }
        if (item.kind === "end") {
          throw new Failure("transient", "the stream ended");
        }
        const received = item.message;
        const revokedSigner = state.signedByRevoked(received.bundles) !== undefined;
        if (received.checkpoint !== null && !revokedSigner) {
          const restored = await state.followTree(received.checkpoint, opened.client);
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
              lastMessageAt = Date.now();
              assembler = new Assembler();
              continue;
            }
          }
          const fresh = await state.checkpoint(received.checkpoint, opened.client);
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
          await state.flushReports(opened.reporter);
        } else if (reportAt === undefined && state.reportsPending()) {
          reportAt = Date.now() + reportDelay(settings.reportSpreadMs);
        }
        continue;
      }
      const now = Date.now();
      const silentUntil = lastMessageAt + opened.deadlineMs;
      if (now >= silentUntil) {
        throw new Failure("transient", `no message for ${opened.deadlineMs} ms, three heartbeats`);
      }
      if (reportAt !== undefined && now >= reportAt) {
        reportAt = undefined;
        await state.flushReports(opened.reporter);
        continue;
      }
      const staleAt = state.freshness.deadline();
      if (staleAt !== undefined && now >= staleAt) {
        await say({ type: "checkpointStale", ...state.freshness.expire() });
        throw new Failure("transient", state.freshness.describe());
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
          lastMessageAt = Date.now();
          // Parts of a revision not yet whole come again, whole, on the
          // new stream, which resumes from the decided one.
          assembler = new Assembler();
          rebalanceAt = undefined;
          await say({ type: "connected", revision: state.decided, endpoint: preferred });
        } catch (error) {
          if (error instanceof Failure && error.kind === "gone") {
            throw error;
          }
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

/**
 * Where one connection's reports go: a `ReportStatusStream` opened at the
 * first report, each report answered before the next is sent; or one
 * `ReportStatus` call per report where the server does not serve the
 * stream or will not hold another one.
 */
class Reporter {
  private route: "unopened" | "calls" | StreamReader<ReportStatusResponse> = "unopened";

  constructor(
    private readonly client: BundleServiceClient,
    private readonly token: ChannelSettings["token"],
    private readonly timeoutMs: number,
    private readonly waker: Waker,
  ) {}

  /** Closes the report stream, if one is open. */
  close(): void {
    if (this.route instanceof StreamReader) {
      this.route.cancel();
    }
    this.route = "unopened";
  }

  /** Sends one report and waits for the server's answer; throws its refusal. */
  async send(request: ReportStatusRequest): Promise<void> {
    if (this.route === "calls") {
      await unary(
        (metadata, options, callback) => this.client.reportStatus(request, metadata, options, callback),
        this.token,
        this.timeoutMs,
      );
      return;
    }
    const opening = this.route === "unopened";
    const reader =
      this.route === "unopened"
        ? new StreamReader<ReportStatusResponse>(this.client.reportStatusStream(metadata(this.token)), this.waker)
        : this.route;
    this.route = reader;
    (reader.stream as grpc.ClientDuplexStream<ReportStatusRequest, ReportStatusResponse>).write(request);
    const until = Date.now() + this.timeoutMs;
    while (!reader.pending && Date.now() < until) {
      await this.waker.wait(until);
    }
    const answer = reader.take();
    if (answer?.kind === "message") {
      return;
    }
    reader.cancel();
    this.route = "unopened";
    if (answer?.kind === "error") {
      if (opening && (answer.error.code === grpcStatus.UNIMPLEMENTED || answer.error.code === grpcStatus.RESOURCE_EXHAUSTED)) {
        this.route = "calls";
        await this.send(request);
        return;
      }
      throw answer.error;
    }
    throw new Error(answer === undefined ? "no answer to a report" : "the report stream ended");
  }
}

/** The 32-byte hashes of a proof the server sent. */
function hashes(proof: Buffer[]): Buffer[] {
  if (proof.some((hash) => hash.length !== 32)) {
    throw new Failure("history", "a proof of malformed hashes");
  }
  return proof;
}

/**
 * What the subscription holds between sessions, and its decisions: the
 * state in force, where to resume, the keys, the cache, the reports not
 * yet sent, the checkpoint's freshness and the server's tree. Exported for
 * the package's own tests.
 *
 * @internal
 */
export class SubscriptionState {
  /** The state in force. */
  private applied: State;
  /** The newest revision applied or rejected: where to resume. */
  decided = 0;
  /** The keys that verify bundles; fetched from the server, never taken from the stream. */
  jwks: Jwks = { keys: [] };
  /**
   * The ids of the revoked keys, fetched with the keys: whatever they sign
   * is refused, a replayed message and a cached state included.
   */
  private revoked: ReadonlySet<string> = new Set();
  private readonly cache: Cache | undefined;
  /** Outcomes not yet reported, by policy, and their revision. */
  private readonly pendingReports = new Map<string, PolicyApplyStatus>();
  private pendingRevision = 0;
  readonly freshness: Freshness;
  /** The server's log's tree as verified last. */
  private readonly tree: Remembered;
  /** The tree the cache remembers, verified once the keys are known. */
  private cachedTree: string | undefined;

  constructor(
    private readonly settings: Settings,
    private readonly telemetry: Telemetry,
  ) {
    this.applied = { namespace: settings.namespace, revision: 0, bundles: {}, source: "server", verifiedAt: new Date(0) };
    this.cache =
      settings.cacheDir === undefined ? undefined : new Cache(settings.cacheDir, settings.namespace, settings.names);
    this.freshness = new Freshness(settings.maxCheckpointAgeMs);
    this.tree = new Remembered(settings.logOrigin, settings.witnesses, settings.cosignatures);
  }

  /** Starts from the cache when there is a good one, and says so. */
  async start(say: Say): Promise<void> {
    const cache = this.cache;
    if (cache === undefined) {
      return;
    }
    this.cachedTree = await cache.loadTree().catch(() => undefined);
    this.tree.restoredThrough = await cache.loadRestore().catch(() => undefined);
    let loaded;
    try {
      loaded = await cache.load();
    } catch (error) {
      await say({ type: "rejected", revision: 0, reason: `the cached state does not verify: ${message(error)}` });
      return;
    }
    if (loaded === undefined) {
      return;
    }
    const { state, jwks, revoked } = loaded;
    const refusal = await check(this.settings.validate, state);
    if (refusal !== undefined) {
      await say({ type: "rejected", revision: state.revision, reason: `the cached state was refused: ${refusal}` });
      return;
    }
    this.decided = state.revision;
    this.applied = state;
    this.jwks = jwks;
    this.revoked = revoked;
    this.telemetry.inForce(state.revision);
    await say({ type: "fromCache", state });
  }

  /**
   * Fetches the keys again. A revocation learned that concerns the state
   * in force is written to the cache at once, so that the cached state it
   * signed is not served again.
   */
  async refreshKeys(client: BundleServiceClient): Promise<void> {
    const { jwks, revoked } = await fetchKeys(client, this.settings.channel.token, this.callTimeoutMs);
    this.jwks = jwks;
    const learned = [...revoked].filter((kid) => !this.revoked.has(kid));
    const concernsState = Object.values(this.applied.bundles).some((held) => learned.includes(held.keyId));
    this.revoked = revoked;
    if (concernsState) {
      await this.save(this.applied);
    }
  }

  /**
   * The first of `bundles` signed by a revoked key, with the reason to
   * refuse it. The session does not take the checkpoint of a message that
   * carries one: an old message replayed carries an old checkpoint, which
   * the revoked key may have signed too.
   */
  signedByRevoked(bundles: readonly Bundle[]): string | undefined {
    for (const bundle of bundles) {
      const kid = keyIdOf(bundle.jws);
      if (kid !== undefined && this.revoked.has(kid)) {
        return `${bundle.name} version ${bundle.version} is ${revokedKey(kid)}`;
      }
    }
    return undefined;
  }

  /**
   * Whether `revision` carries a version held in force signed by another
   * key: the sign that the key which signed it may have been revoked,
   * which the keys, fetched again, tell.
   */
  private reSignsHeld(revision: Revision): boolean {
    return revision.bundles.some((bundle) => {
      const held = this.applied.bundles[bundle.name];
      const kid = keyIdOf(bundle.jws);
      return (
        held !== undefined &&
        held.version === bundle.version &&
        held.digest === bundle.digest &&
        kid !== undefined &&
        kid !== held.keyId
      );
    });
  }

  private get callTimeoutMs(): number {
    return 3 * Math.max(this.settings.channel.heartbeatIntervalMs, 1_000);
  }

  /** Whether `jws` names a key of the JWKS held. */
  private knowsKeyOf(jws: string): boolean {
    try {
      return knows(this.jwks, keyId(jws));
    } catch {
      return false;
    }
  }

  /**
   * Verifies a checkpoint of the stream (a key unknown to the JWKS makes it
   * fetch the JWKS once more) and takes it; the event when it ends a stale
   * spell. One that does not verify ends the connection.
   */
  async checkpoint(checkpoint: Checkpoint, client: BundleServiceClient): Promise<Event | undefined> {
    if (this.freshness.holds(checkpoint.jws)) {
      return undefined;
    }
    if (!this.knowsKeyOf(checkpoint.jws)) {
      await this.refreshKeys(client).catch(() => undefined);
    }
    let verified;
    try {
      verified = await verifyCheckpoint(checkpoint.jws, this.jwks);
    } catch (error) {
      throw new Failure("transient", `a checkpoint does not verify: ${message(error)}`);
    }
    const fresh = this.freshness.observe(verified.claims, verified.signedAt, checkpoint.jws);
    return fresh === undefined ? undefined : { type: "checkpointFresh", ...fresh };
  }

  /** The size of the server's tree as verified last (0: none yet). */
  verifiedSize(): number {
    return this.tree.head?.size ?? 0;
  }

  /**
   * Follows the server's log's tree from a checkpoint's note: the first one
   * verified is remembered; a newer tree only with a consistency proof from
   * the remembered one; a tree that does not extend it only when the server
   * proves that it records a restore (said by the event returned); anything
   * else is a history refused. The tree remembered is cached.
   */
  async followTree(checkpoint: Checkpoint, client: BundleServiceClient): Promise<Event | undefined> {
    const cachedTree = this.cachedTree;
    this.cachedTree = undefined;
    if (cachedTree !== undefined) {
      try {
        const head = verifyNote(cachedTree, this.tree.origin, this.jwks);
        this.tree.origin = head.origin;
        this.tree.head = head;
      } catch {
        // A cached tree that does not verify is forgotten.
      }
    }
    if (checkpoint.note === "" || this.tree.head?.note === checkpoint.note) {
      return undefined;
    }
    let offered: TreeHead;
    try {
      offered = verifyNote(checkpoint.note, this.tree.origin, this.jwks);
    } catch {
      // Perhaps a key rotated since the keys were fetched.
      await this.refreshKeys(client);
      try {
        offered = verifyNote(checkpoint.note, this.tree.origin, this.jwks);
      } catch (error) {
        throw new Failure("history", message(error));
      }
    }
    let judgement;
    try {
      judgement = this.tree.judge(offered);
    } catch (error) {
      throw new Failure("history", message(error));
    }
    if (judgement.kind === "same") {
      return undefined;
    }
    if (judgement.kind === "diverges") {
      return this.takeRestore(offered, judgement.reason, client);
    }
    let proof: Buffer[] = [];
    if (this.tree.head !== undefined) {
      try {
        const answer = await unary<GetConsistencyProofResponse>(
          (metadata, options, callback) =>
            client.getConsistencyProof({ oldSize: judgement.size, newSize: offered.size }, metadata, options, callback),
          this.settings.channel.token,
          this.callTimeoutMs,
        );
        proof = answer.hashes;
      } catch (error) {
        throw Failure.fromStatus(error as grpc.ServiceError);
      }
    }
    try {
      this.tree.extend(offered, hashes(proof));
    } catch (error) {
      if (error instanceof Failure) throw error;
      return this.takeRestore(offered, message(error), client);
    }
    await this.rememberTree();
    return undefined;
  }

  /**
   * Takes `offered`, a tree that does not extend the one verified last
   * (`diverges` says how), when the server proves that it records a restore
   * newer than any taken before; refuses it otherwise.
   */
  private async takeRestore(offered: TreeHead, diverges: string, client: BundleServiceClient): Promise<Event> {
    const fromSize = this.verifiedSize();
    let answer;
    try {
      answer = await unary<GetRestoreProofResponse>(
        (metadata, options, callback) =>
          client.getRestoreProof({ treeSize: offered.size }, metadata, options, callback),
        this.settings.channel.token,
        this.callTimeoutMs,
      );
    } catch (error) {
      const status = error as grpc.ServiceError;
      // No restore recorded (or a server from before restores).
      if (status.code === grpcStatus.NOT_FOUND || status.code === grpcStatus.UNIMPLEMENTED) {
        throw new Failure("history", diverges);
      }
      throw Failure.fromStatus(status);
    }
    const proof = answer.proof;
    let reason: string;
    try {
      reason = this.tree.restore(offered, {
        canonical: proof?.canonicalEvent ?? "",
        leafIndex: proof?.leafIndex ?? 0,
        treeSize: proof?.treeSize ?? 0,
        hashes: hashes(proof?.hashes ?? []),
      });
    } catch (error) {
      throw new Failure("history", `${diverges}; ${message(error)}`);
    }
    await this.rememberTree();
    return { type: "historyRestored", reason, fromSize, toSize: offered.size };
  }

  /** Caches the tree verified last, and the last restore taken. */
  private async rememberTree(): Promise<void> {
    const head = this.tree.head;
    if (this.cache === undefined || head === undefined) {
      return;
    }
    try {
      await this.cache.saveTree(head.note);
      if (this.tree.restoredThrough !== undefined) {
        await this.cache.saveRestore(this.tree.restoredThrough);
      }
    } catch {
      // The cache is a help, not a condition: the tree stays remembered in memory.
    }
  }

  /**
   * Verifies one bundle of the stream; a key unknown to the JWKS makes it
   * fetch the JWKS once more, a revoked one refuses it.
   */
  private async verify(bundle: Bundle, client: BundleServiceClient): Promise<VerifiedBundle> {
    const kid = keyId(bundle.jws);
    if (!knows(this.jwks, kid) && !this.revoked.has(kid)) {
      await this.refreshKeys(client).catch(() => undefined);
    }
    if (this.revoked.has(kid)) {
      throw new Error(revokedKey(kid));
    }
    const { namespace, names } = this.settings;
    if (names.length > 0 && !names.includes(bundle.name)) {
      throw new Error(`${namespace}/${bundle.name} was not asked for`);
    }
    const claims = await verifyEnvelope(
      bundle.jws,
      { namespace, name: bundle.name, version: bundle.version, digest: bundle.digest },
      this.jwks,
    );
    return {
      name: bundle.name,
      version: claims.ver,
      ...(claims.label === undefined ? {} : { label: claims.label }),
      digest: claims.digest,
      revision: bundle.revision,
      keyId: keyId(bundle.jws),
      body: claims.body,
      jws: bundle.jws,
    };
  }

  /** Applies or rejects one whole revision; what the application is told, if anything. */
  async decide(revision: Revision, client: BundleServiceClient): Promise<Event | undefined> {
    const isSnapshot = revision.kind === "WATCH_EVENT_KIND_SNAPSHOT";
    if (!isSnapshot && revision.kind !== "WATCH_EVENT_KIND_UPDATE") {
      // A heartbeat: the cursor moves, nothing changes.
      this.decided = Math.max(this.decided, revision.revision);
      return undefined;
    }
    if (revision.revision < this.applied.revision && !revision.reset) {
      // Harmless as an old message, but someone sends what a revoked key
      // signed: said, though nothing changes.
      const reason = this.signedByRevoked(revision.bundles);
      return reason === undefined ? undefined : { type: "rejected", revision: revision.revision, reason };
    }
    if (!isSnapshot && revision.bundles.length === 0) {
      this.decided = Math.max(this.decided, revision.revision);
      return undefined;
    }
    if (this.reSignsHeld(revision)) {
      // Without the keys fetched again, the revision is verified against
      // the keys held.
      await this.refreshKeys(client).catch(() => undefined);
    }
    return this.telemetry.decide(revision.revision, async () => {
      const event = await this.decideWhole(revision, isSnapshot, client);
      return { outcome: event.type, value: event };
    });
  }

  private async decideWhole(revision: Revision, isSnapshot: boolean, client: BundleServiceClient): Promise<Event> {
    const { namespace } = this.settings;
    const verified: VerifiedBundle[] = [];
    const failures: { bundle: Bundle; reason: string }[] = [];
    for (const bundle of revision.bundles) {
      try {
        verified.push(await this.verify(bundle, client));
      } catch (error) {
        failures.push({ bundle, reason: message(error) });
      }
    }
    let rejectedBecause: string | undefined;
    const first = failures[0];
    if (first === undefined) {
      const candidate: State = {
        namespace,
        revision: revision.revision,
        bundles: isSnapshot ? {} : { ...this.applied.bundles },
        source: "server",
        verifiedAt: new Date(),
      };
      for (const bundle of verified) {
        candidate.bundles[bundle.name] = bundle;
      }
      rejectedBecause = await check(this.settings.validate, candidate);
      if (rejectedBecause === undefined) {
        this.report(revision, "APPLY_STATE_APPLIED", () => "");
        await this.save(candidate);
        this.applied = candidate;
        this.telemetry.inForce(candidate.revision);
      }
    } else {
      rejectedBecause =
        `${namespace}/${first.bundle.name} version ${first.bundle.version} does not verify: ${first.reason}`;
    }
    // A reset snapshot is the whole of a server behind the cursor (one
    // restored from a backup): its revision is the cursor from now on.
    this.decided = revision.reset ? revision.revision : Math.max(this.decided, revision.revision);
    if (rejectedBecause === undefined) {
      return { type: "applied", state: this.applied };
    }
    const reason = rejectedBecause;
    const failed = new Map(failures.map(({ bundle, reason: own }) => [bundle.name, own]));
    this.report(revision, "APPLY_STATE_REJECTED", (name) => {
      const own = failed.get(name);
      return own === undefined ? reason : `does not verify: ${own}`;
    });
    return { type: "rejected", revision: revision.revision, reason };
  }

  /** Keeps `state` as the last-known-good one. */
  private async save(state: State): Promise<void> {
    try {
      await this.cache?.save(state, this.jwks, this.revoked);
    } catch {
      // The state is in force all the same; the next one is saved again.
    }
  }

  /** Queues the outcome of every bundle of `revision`. */
  private report(
    revision: Revision,
    outcome: "APPLY_STATE_APPLIED" | "APPLY_STATE_REJECTED",
    error: (name: string) => string,
  ): void {
    for (const bundle of revision.bundles) {
      this.pendingReports.set(bundle.name, {
        name: bundle.name,
        version: bundle.version,
        state: outcome,
        // At most 1000 characters, as the server keeps.
        error: Array.from(error(bundle.name)).slice(0, 1000).join(""),
        revision: revision.revision,
      });
    }
    this.pendingRevision = Math.max(this.pendingRevision, revision.revision);
  }

  /** Whether outcomes wait to be reported. */
  reportsPending(): boolean {
    return this.pendingReports.size > 0;
  }

  /** Sends the queued outcomes; keeps them for the next try on failure. */
  async flushReports(reporter: Reporter): Promise<void> {
    const runtime = this.settings.runtime;
    if (runtime === undefined) {
      this.pendingReports.clear();
      return;
    }
    if (this.pendingReports.size === 0) {
      return;
    }
    const request: ReportStatusRequest = {
      namespace: this.settings.namespace,
      runtimeId: runtime.id,
      revision: this.pendingRevision,
      policies: [...this.pendingReports.values()],
    };
    try {
      await reporter.send(request);
      this.pendingReports.clear();
    } catch {
      // Kept for the next try, on this connection or the next.
    }
  }
}

/** The key id a JWS's header names, if it names one. */
function keyIdOf(jws: string): string | undefined {
  try {
    return keyId(jws);
  } catch {
    return undefined;
  }
}

/** Why a bundle signed by `kid`, a revoked key, is refused. */
function revokedKey(kid: string): string {
  return `signed by revoked key ${JSON.stringify(kid)}`;
}
