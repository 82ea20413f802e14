/**
 * The subscription's history: the signed checkpoints it verifies (and how
 * fresh the last one is), the server's tree it follows by consistency
 * proofs, and a declared restore it takes once.
 *
 * @module
 */

import type * as grpc from "@grpc/grpc-js";
import { status as grpcStatus } from "@grpc/grpc-js";

import { type Jwks, keyId, knows } from "../bundle.js";
import type { Cache } from "../cache.js";
import { Freshness, verifyCheckpoint } from "../checkpoint.js";
import { type BundleServiceClient, Failure, message, unary } from "../connection.js";
import { exactInteger } from "../integers.js";
import type { Checkpoint } from "../generated/policyhub/v1/Checkpoint.js";
import type { GetConsistencyProofResponse } from "../generated/policyhub/v1/GetConsistencyProofResponse.js";
import type { GetRestoreProofResponse } from "../generated/policyhub/v1/GetRestoreProofResponse.js";
import type { Event } from "../state.js";
import { Remembered, type TreeHead, verifyNote } from "../tree.js";
import { type Settings, callTimeoutMs } from "./settings.js";

/** The keys the history is verified with: those held, and how to fetch them again. */
export interface Keys {
  readonly jwks: Jwks;
  refreshKeys(client: BundleServiceClient): Promise<void>;
}

/** The 32-byte hashes of a proof the server sent. */
function hashes(proof: Buffer[]): Buffer[] {
  if (proof.some((hash) => hash.length !== 32)) {
    throw new Failure("history", "a proof of malformed hashes");
  }
  return proof;
}

/**
 * The proof a watch message's checkpoint carries, when it is the one from
 * the tree of `oldSize` to the tree of `newSize`: checked as one asked of
 * the server would be, it spares the call.
 */
function carriedProof(checkpoint: Checkpoint, oldSize: number, newSize: number): Buffer[] | undefined {
  const carried = checkpoint.consistencyProof;
  if (carried === null) {
    return undefined;
  }
  return carried.oldSize === String(oldSize) && carried.newSize === String(newSize) ? carried.hashes : undefined;
}

/** What the subscription knows of the server's history, between sessions. */
export class History {
  readonly freshness: Freshness;
  /** The server's log's tree as verified last. */
  private readonly tree: Remembered;
  /** The tree the cache remembers, verified once the keys are known. */
  private cachedTree: string | undefined;

  constructor(
    private readonly settings: Settings,
    private readonly cache: Cache | undefined,
    private readonly keys: Keys,
  ) {
    this.freshness = new Freshness(settings.maxCheckpointAgeMs);
    this.tree = new Remembered(settings.logOrigin, settings.witnesses, settings.cosignatures);
  }

  /** Takes up the tree verified last and the last restore taken, as the cache remembers them. */
  async loadCached(): Promise<void> {
    if (this.cache === undefined) {
      return;
    }
    this.cachedTree = await this.cache.loadTree().catch(() => undefined);
    this.tree.restoredThrough = await this.cache.loadRestore().catch(() => undefined);
  }

  /** Whether `jws` names a key of the JWKS held. */
  private knowsKeyOf(jws: string): boolean {
    try {
      return knows(this.keys.jwks, keyId(jws));
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
      await this.keys.refreshKeys(client).catch(() => undefined);
    }
    let verified;
    try {
      verified = await verifyCheckpoint(checkpoint.jws, this.keys.jwks);
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
        const head = verifyNote(cachedTree, this.tree.origin, this.keys.jwks);
        this.tree.origin = head.origin;
        this.tree.head = head;
      } catch (error) {
        // A cached tree that does not verify is forgotten.
        this.settings.logger.error(`refusing the cached tree: ${message(error)}`);
      }
    }
    if (checkpoint.note === "" || this.tree.head?.note === checkpoint.note) {
      return undefined;
    }
    let offered: TreeHead;
    try {
      offered = verifyNote(checkpoint.note, this.tree.origin, this.keys.jwks);
    } catch {
      // Perhaps a key rotated since the keys were fetched.
      await this.keys.refreshKeys(client);
      try {
        offered = verifyNote(checkpoint.note, this.tree.origin, this.keys.jwks);
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
      proof =
        carriedProof(checkpoint, judgement.size, offered.size) ??
        (await this.fetchProof(judgement.size, offered.size, client));
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

  /** The proof that the tree of `newSize` extends the one of `oldSize`, asked of the server. */
  private async fetchProof(oldSize: number, newSize: number, client: BundleServiceClient): Promise<Buffer[]> {
    try {
      const answer = await unary<GetConsistencyProofResponse>(
        (metadata, options, callback) => client.getConsistencyProof({ oldSize, newSize }, metadata, options, callback),
        this.settings.channel.token,
        callTimeoutMs(this.settings),
      );
      return answer.hashes;
    } catch (error) {
      throw Failure.fromStatus(error as grpc.ServiceError);
    }
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
        callTimeoutMs(this.settings),
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
        leafIndex: exactInteger("the restore's leaf index", proof?.leafIndex ?? "0"),
        treeSize: exactInteger("the restore proof's tree size", proof?.treeSize ?? "0"),
        hashes: hashes(proof?.hashes ?? []),
      });
    } catch (error) {
      throw new Failure("history", `${diverges}; ${message(error)}`);
    }
    await this.rememberTree();
    this.settings.logger.warn(
      `took the server's restored history (${fromSize} to ${offered.size} events), as its operator declared: ${reason}`,
    );
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
    } catch (error) {
      // The cache is a help, not a condition: the tree stays remembered in memory.
      this.settings.logger.warn(`cannot cache the server's tree: ${message(error)}`);
    }
  }
}
