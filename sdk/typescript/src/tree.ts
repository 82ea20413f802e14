/**
 * The server's log as a Merkle tree, as a runtime remembers it: the last
 * checkpoint note it verified (C2SP tlog-checkpoint in a C2SP signed note,
 * signed under the log's origin by a key of the JWKS). A newer tree is
 * accepted only with an RFC 9162 consistency proof from the remembered one;
 * a smaller tree, another tree of the same size, or a tree the proof does
 * not tie to the remembered one is a history wound back or forked: refused,
 * and the state in force stays, unless the server proves that its tree
 * records a restore an operator declared (a RESTORED event) after any
 * restore taken before: then it is taken, and said.
 *
 * @module
 */

import { createHash } from "node:crypto";

import { type Jwks, VerifyError } from "./bundle.js";
import { exactInteger } from "./integers.js";
import { cosignedBy, parseNote, verifyLogSignature } from "./note.js";

/** A verified checkpoint of the server's tree. */
export interface TreeHead {
  /** The origin line: which log. */
  origin: string;
  /** How many events the tree holds. */
  size: number;
  /** Its RFC 9162 root hash. */
  root: Buffer;
  /** The signed note itself, for the cache. */
  note: string;
}

/** The hash of a leaf: SHA-256(0x00 ‖ data). */
export function recordHash(data: Uint8Array | string): Buffer {
  return createHash("sha256").update(Buffer.from([0])).update(data).digest();
}

/** The hash of an inner node: SHA-256(0x01 ‖ left ‖ right). */
export function nodeHash(left: Uint8Array, right: Uint8Array): Buffer {
  return createHash("sha256").update(Buffer.from([1])).update(left).update(right).digest();
}

/**
 * Verifies a checkpoint note: signed under its origin (which must be
 * `origin` when one is pinned) by a key of `jwks`; a {@link VerifyError}
 * says why not.
 */
export function verifyNote(note: string, origin: string | undefined, jwks: Jwks): TreeHead {
  const parsed = parseNote(note);
  const lines = parsed.text.split("\n");
  const [name, size, root] = lines;
  if (
    name === undefined ||
    name === "" ||
    size === undefined ||
    !/^(0|[1-9][0-9]*)$/u.test(size) ||
    root === undefined ||
    Buffer.from(root, "base64").length !== 32
  ) {
    throw new VerifyError("not a checkpoint of a tree: malformed text");
  }
  if (origin !== undefined && name !== origin) {
    throw new VerifyError(`the checkpoint is of the log ${JSON.stringify(name)}, not of ${JSON.stringify(origin)}`);
  }
  verifyLogSignature(parsed, name, jwks);
  return { origin: name, size: exactInteger("the tree's size", size), root: Buffer.from(root, "base64"), note };
}

/** Whether `n` has its lowest bit set. */
const odd = (n: bigint): boolean => (n & 1n) === 1n;

/**
 * RFC 9162 §2.1.4.2: whether `proof` shows that the tree of `secondSize`
 * with root `secondRoot` extends the one of `firstSize` with `firstRoot`.
 */
export function verifyConsistency(
  firstSize: number,
  firstRoot: Uint8Array,
  secondSize: number,
  secondRoot: Uint8Array,
  proof: readonly Uint8Array[],
): boolean {
  if (firstSize > secondSize) {
    return false;
  }
  if (firstSize === secondSize) {
    return proof.length === 0 && Buffer.compare(Buffer.from(firstRoot), Buffer.from(secondRoot)) === 0;
  }
  if (firstSize === 0) {
    return proof.length === 0;
  }
  let path = [...proof];
  const first = BigInt(firstSize);
  if ((first & (first - 1n)) === 0n) {
    path = [firstRoot, ...path];
  }
  let fn = first - 1n;
  let sn = BigInt(secondSize) - 1n;
  while (odd(fn)) {
    fn >>= 1n;
    sn >>= 1n;
  }
  const [start, ...rest] = path;
  if (start === undefined) {
    return false;
  }
  let fr: Uint8Array = start;
  let sr: Uint8Array = start;
  for (const c of rest) {
    if (sn === 0n) {
      return false;
    }
    if (odd(fn) || fn === sn) {
      fr = nodeHash(c, fr);
      sr = nodeHash(c, sr);
      while (!odd(fn) && fn !== 0n) {
        fn >>= 1n;
        sn >>= 1n;
      }
    } else {
      sr = nodeHash(sr, c);
    }
    fn >>= 1n;
    sn >>= 1n;
  }
  return (
    sn === 0n &&
    Buffer.compare(Buffer.from(fr), Buffer.from(firstRoot)) === 0 &&
    Buffer.compare(Buffer.from(sr), Buffer.from(secondRoot)) === 0
  );
}

/**
 * RFC 9162 §2.1.3.2: whether `proof` shows that the leaf of hash `leaf` at
 * `index` is in the tree of `size` with root `root`.
 */
export function verifyInclusion(
  index: number,
  size: number,
  leaf: Uint8Array,
  root: Uint8Array,
  proof: readonly Uint8Array[],
): boolean {
  if (index >= size) {
    return false;
  }
  let fn = BigInt(index);
  let sn = BigInt(size) - 1n;
  let r: Uint8Array = leaf;
  for (const p of proof) {
    if (sn === 0n) {
      return false;
    }
    if (odd(fn) || fn === sn) {
      r = nodeHash(p, r);
      while (!odd(fn) && fn !== 0n) {
        fn >>= 1n;
        sn >>= 1n;
      }
    } else {
      r = nodeHash(r, p);
    }
    fn >>= 1n;
    sn >>= 1n;
  }
  return sn === 0n && Buffer.compare(Buffer.from(r), Buffer.from(root)) === 0;
}

/** What a runtime makes of a verified tree head. */
export type Judgement =
  /** The tree it holds. */
  | { kind: "same" }
  /** A larger tree: accept it with a consistency proof from this size. */
  | { kind: "proveFrom"; size: number }
  /** A tree that cannot extend the one held: refused unless it records a restore. */
  | { kind: "diverges"; reason: string };

/** The proof that a tree records a restore. */
export interface RestoreProof {
  /** The RESTORED event's canonical form: the leaf's data. */
  canonical: string;
  leafIndex: number;
  treeSize: number;
  hashes: Buffer[];
}

/** The tree a runtime verified last, and what it requires of the next. */
export class Remembered {
  /** The log it follows: pinned, or the first one it verified. */
  origin: string | undefined;
  head: TreeHead | undefined;
  /** The leaf of the last restore taken: an older one is not taken again. */
  restoredThrough: number | undefined;

  constructor(
    origin: string | undefined,
    /** The witnesses' verifier keys. */
    private readonly witnesses: readonly string[],
    /** How many of them must have cosigned a checkpoint before it is taken. */
    private readonly cosignatures: number,
  ) {
    this.origin = origin;
  }

  /** Whether `offered` may follow the remembered tree, and with which proof; throws why not. */
  judge(offered: TreeHead): Judgement {
    if (this.cosignatures > 0) {
      const cosigned = cosignedBy(offered.note, this.witnesses);
      if (cosigned.length < this.cosignatures) {
        throw new Error(
          `the server's checkpoint of ${offered.size} events carries ${cosigned.length} of the ` +
            `${this.cosignatures} witnesses' cosignatures this runtime requires`,
        );
      }
    }
    const held = this.head;
    if (held === undefined) {
      return { kind: "proveFrom", size: 0 };
    }
    if (offered.origin !== held.origin) {
      throw new Error(
        `the server's checkpoint is of the log ${JSON.stringify(offered.origin)}, ` +
          `this runtime follows ${JSON.stringify(held.origin)}`,
      );
    }
    if (offered.size < held.size) {
      return {
        kind: "diverges",
        reason:
          `the server's log of ${offered.size} events is smaller than the ${held.size} this runtime ` +
          "verified: its history was wound back",
      };
    }
    if (offered.size === held.size) {
      return offered.root.equals(held.root)
        ? { kind: "same" }
        : {
            kind: "diverges",
            reason:
              `the server's log of ${offered.size} events is not the one of ${held.size} events this ` +
              "runtime verified: a forked history",
          };
    }
    return { kind: "proveFrom", size: held.size };
  }

  /** Takes `offered` when `proof` shows it extends the remembered tree; throws otherwise. */
  extend(offered: TreeHead, proof: readonly Buffer[]): void {
    const held = this.head;
    if (held !== undefined && !verifyConsistency(held.size, held.root, offered.size, offered.root, proof)) {
      throw new Error(
        `the server's log of ${offered.size} events does not extend the one of ${held.size} events ` +
          "this runtime verified: a forked history",
      );
    }
    this.origin = offered.origin;
    this.head = offered;
  }

  /**
   * Takes `offered`, a tree that does not extend the remembered one, when
   * `restore` proves that it records a restore newer than any taken
   * before; returns the operator's reason for it, throws otherwise.
   */
  restore(offered: TreeHead, restore: RestoreProof): string {
    if (restore.treeSize !== offered.size) {
      throw new Error(
        `the restore is proven in a tree of ${restore.treeSize} events, not the ${offered.size} offered`,
      );
    }
    if (this.restoredThrough !== undefined && restore.leafIndex <= this.restoredThrough) {
      throw new Error(
        `the restore it records (leaf ${restore.leafIndex}) is not newer than the one taken before`,
      );
    }
    let event: unknown;
    try {
      event = JSON.parse(restore.canonical);
    } catch (error) {
      throw new Error(`the restore's event is not JSON: ${(error as Error).message}`);
    }
    const record = (typeof event === "object" && event !== null ? event : {}) as Record<string, unknown>;
    if (record.kind !== "RESTORED") {
      throw new Error("the event proven is not a restore");
    }
    const leaf = recordHash(restore.canonical);
    if (!verifyInclusion(restore.leafIndex, offered.size, leaf, offered.root, restore.hashes)) {
      throw new Error("the restore's inclusion proof does not verify");
    }
    this.restoredThrough = restore.leafIndex;
    this.origin = offered.origin;
    this.head = offered;
    return typeof record.reason === "string" ? record.reason : "";
  }
}
