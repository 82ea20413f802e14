/**
 * What the subscription holds between sessions, and its decisions: the
 * state in force, where to resume, the keys (and the revoked ones) and the
 * cache; the start from the cache, and each whole revision verified,
 * validated, applied or rejected. Its history and the outcomes it has yet
 * to report are kept by `history` and `reporter`.
 *
 * @module
 */

import { type Jwks, keyId, knows, verifyEnvelope } from "../bundle.js";
import { Cache } from "../cache.js";
import { type BundleServiceClient, fetchKeys, message } from "../connection.js";
import type { Validate } from "../options.js";
import type { Event, Revision, Say, State, StreamBundle, VerifiedBundle } from "../state.js";
import type { Telemetry } from "../telemetry.js";
import { History } from "./history.js";
import { Reports } from "./reporter.js";
import { type Settings, callTimeoutMs } from "./settings.js";

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

/**
 * What the subscription holds between sessions, and its decisions.
 * Exported for the package's own tests.
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
  /** The outcomes not yet reported. */
  readonly reports: Reports;
  /** The checkpoints' freshness and the server's tree. */
  readonly history: History;

  constructor(
    private readonly settings: Settings,
    private readonly telemetry: Telemetry,
  ) {
    this.applied = { namespace: settings.namespace, revision: 0, bundles: {}, source: "server", verifiedAt: new Date(0) };
    this.cache =
      settings.cacheDir === undefined ? undefined : new Cache(settings.cacheDir, settings.namespace, settings.names);
    this.reports = new Reports(settings);
    this.history = new History(settings, this.cache, this);
  }

  /** Starts from the cache when there is a good one, and says so. */
  async start(say: Say): Promise<void> {
    const cache = this.cache;
    if (cache === undefined) {
      return;
    }
    await this.history.loadCached();
    let loaded;
    try {
      loaded = await cache.load();
    } catch (error) {
      this.settings.logger.error(`refusing the cached state ${cache.path} (${message(error)}); starting without one`);
      await say({ type: "rejected", revision: 0, reason: `the cached state does not verify: ${message(error)}` });
      return;
    }
    if (loaded === undefined) {
      return;
    }
    const { state, jwks, revoked } = loaded;
    const refusal = await check(this.settings.validate, state);
    if (refusal !== undefined) {
      this.settings.logger.warn(`the cached state at revision ${state.revision} was refused: ${refusal}`);
      await say({ type: "rejected", revision: state.revision, reason: `the cached state was refused: ${refusal}` });
      return;
    }
    this.settings.logger.info(`started from the cached state at revision ${state.revision} until the server answers`);
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
    const { jwks, revoked } = await fetchKeys(client, this.settings.channel.token, callTimeoutMs(this.settings));
    this.jwks = jwks;
    const learned = [...revoked].filter((kid) => !this.revoked.has(kid));
    if (learned.length > 0) {
      this.settings.logger.warn(`the server revoked signing keys ${JSON.stringify(learned.sort())}`);
    }
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
  signedByRevoked(bundles: readonly StreamBundle[]): string | undefined {
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

  /**
   * Verifies one bundle of the stream; a key unknown to the JWKS makes it
   * fetch the JWKS once more, a revoked one refuses it.
   */
  private async verify(bundle: StreamBundle, client: BundleServiceClient): Promise<VerifiedBundle> {
    const kid = keyId(bundle.jws);
    if (!knows(this.jwks, kid) && !this.revoked.has(kid)) {
      await this.refreshKeys(client).catch((error: unknown) => {
        this.settings.logger.warn(`cannot fetch the signing keys again: ${message(error)}`);
      });
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

  /**
   * Whether `revision` brings nothing newer than the state in force: an older revision, or the
   * server's own revision in force again (a message replayed). A reset (a server behind the
   * cursor) is new, and so is the server's state at the revision of one read from the cache.
   */
  private isStale(revision: Revision): boolean {
    const again =
      revision.revision === this.applied.revision &&
      this.applied.revision > 0 &&
      this.applied.source === "server";
    return (revision.revision < this.applied.revision || again) && !revision.reset;
  }

  /** Applies or rejects one whole revision; what the application is told, if anything. */
  async decide(revision: Revision, client: BundleServiceClient): Promise<Event | undefined> {
    const isSnapshot = revision.kind === "WATCH_EVENT_KIND_SNAPSHOT";
    if (!isSnapshot && revision.kind !== "WATCH_EVENT_KIND_UPDATE") {
      // A heartbeat: the cursor moves, nothing changes.
      this.decided = Math.max(this.decided, revision.revision);
      return undefined;
    }
    if (this.isStale(revision)) {
      // Harmless as an old message, but someone sends what a revoked key
      // signed: said, though nothing changes.
      const reason = this.signedByRevoked(revision.bundles);
      if (reason === undefined) {
        this.settings.logger.warn(
          `ignoring revision ${revision.revision}, not newer than the one applied (${this.applied.revision})`,
        );
        return undefined;
      }
      this.settings.logger.warn(`refused an old revision ${revision.revision}: ${reason}`);
      return { type: "rejected", revision: revision.revision, reason };
    }
    if (!isSnapshot && revision.bundles.length === 0) {
      this.decided = Math.max(this.decided, revision.revision);
      return undefined;
    }
    if (this.reSignsHeld(revision)) {
      // Without the keys fetched again, the revision is verified against
      // the keys held.
      await this.refreshKeys(client).catch((error: unknown) => {
        this.settings.logger.warn(`cannot fetch the signing keys again: ${message(error)}`);
      });
    }
    return this.telemetry.decide(revision.revision, async () => {
      const event = await this.decideWhole(revision, isSnapshot, client);
      return { outcome: event.type, value: event };
    });
  }

  private async decideWhole(revision: Revision, isSnapshot: boolean, client: BundleServiceClient): Promise<Event> {
    const { namespace } = this.settings;
    const verified: VerifiedBundle[] = [];
    const failures: { bundle: StreamBundle; reason: string }[] = [];
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
        this.reports.queue(revision, "APPLY_STATE_APPLIED", () => "");
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
    this.settings.logger.warn(`rejected revision ${revision.revision}; the previous one stays in force: ${reason}`);
    const failed = new Map(failures.map(({ bundle, reason: own }) => [bundle.name, own]));
    this.reports.queue(revision, "APPLY_STATE_REJECTED", (name) => {
      const own = failed.get(name);
      return own === undefined ? reason : `does not verify: ${own}`;
    });
    return { type: "rejected", revision: revision.revision, reason };
  }

  /** Keeps `state` as the last-known-good one. */
  private async save(state: State): Promise<void> {
    try {
      await this.cache?.save(state, this.jwks, this.revoked);
    } catch (error) {
      // The state is in force all the same; the next one is saved again.
      this.settings.logger.warn(`cannot write the cache ${this.cache?.path ?? ""}: ${message(error)}`);
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
