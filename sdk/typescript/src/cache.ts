/**
 * The last-known-good state on disk, in the Rust library's format, so that
 * a runtime restarted while the server is away starts from what it had.
 * Every bundle is verified again when read back, against the JWKS saved
 * with it, and refused when signed by a key known revoked when it was
 * saved; files are replaced atomically (written beside, synced, renamed).
 * Several subscriptions may share a cache directory and follow one
 * namespace, in one process or in several: each writes through a temporary
 * file of its own (a random name, opened only if no file has it), so that
 * one writer never truncates or renames away another's.
 *
 * `<dir>/<namespace>.state.json` holds the state, `<namespace>.state.tree`
 * the server's tree verified last, `<namespace>.state.restore` the leaf of
 * the last restore taken.
 *
 * @module
 */

import { randomBytes } from "node:crypto";
import { type FileHandle, mkdir, open, readFile, rename, rm, stat } from "node:fs/promises";
import { dirname, join } from "node:path";

import { type Jwks, keyId, verify } from "./bundle.js";
import { exactInteger } from "./integers.js";
import type { State, VerifiedBundle } from "./state.js";

const FORMAT = 1;

interface CacheFile {
  format: number;
  namespace: string;
  names: string[];
  revision: number;
  jwks: Jwks;
  /**
   * The ids of the keys known revoked when it was written: a bundle they
   * signed is refused when the file is read back. Absent from the files of
   * earlier versions, and when none is known.
   */
  revoked_key_ids?: string[];
  bundles: { jws: string; revision: number }[];
  verified_at_unix_ms?: number;
}

async function readIfAny(path: string): Promise<string | undefined> {
  try {
    return await readFile(path, "utf8");
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === "ENOENT") {
      return undefined;
    }
    throw error;
  }
}

/** How many random names a temporary file tries: a name is taken only by a leftover of a writer that crashed, or one at work. */
const TEMPORARY_NAME_ATTEMPTS = 16;

/** A new file beside `path`, `<name>.<16 random hex digits>.tmp`, opened only if no file has that name. */
async function createTemporary(path: string): Promise<{ file: FileHandle; temporary: string }> {
  for (let attempt = 1; ; attempt++) {
    const temporary = `${path}.${randomBytes(8).toString("hex")}.tmp`;
    try {
      return { file: await open(temporary, "wx"), temporary };
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== "EEXIST" || attempt >= TEMPORARY_NAME_ATTEMPTS) {
        throw error;
      }
    }
  }
}

/** Replaces `path` with `contents`: a temporary file of its own, synced, renamed; removed when a step fails. */
async function writeAtomically(path: string, contents: string): Promise<void> {
  const dir = dirname(path);
  await mkdir(dir, { recursive: true });
  const { file, temporary } = await createTemporary(path);
  try {
    try {
      await file.writeFile(contents);
      await file.sync();
    } finally {
      await file.close();
    }
    await rename(temporary, path);
  } catch (error) {
    await rm(temporary, { force: true });
    throw error;
  }
  const directory = await open(dir, "r");
  try {
    await directory.sync();
  } finally {
    await directory.close();
  }
}

/** The cache of one subscription. */
export class Cache {
  /** Where the state is kept. */
  readonly path: string;

  constructor(
    dir: string,
    private readonly namespace: string,
    private readonly names: readonly string[],
  ) {
    this.path = join(dir, `${namespace}.state.json`);
  }

  private get treePath(): string {
    return this.path.replace(/\.json$/u, ".tree");
  }

  private get restorePath(): string {
    return this.path.replace(/\.json$/u, ".restore");
  }

  /** The checkpoint note verified last, if one was kept. */
  loadTree(): Promise<string | undefined> {
    return readIfAny(this.treePath);
  }

  saveTree(note: string): Promise<void> {
    return writeAtomically(this.treePath, note);
  }

  /** The leaf of the last restore taken, if one was kept. */
  async loadRestore(): Promise<number | undefined> {
    const text = await readIfAny(this.restorePath);
    if (text === undefined) {
      return undefined;
    }
    const leaf = Number(text.trim());
    if (!Number.isSafeInteger(leaf) || leaf < 0) {
      throw new Error(`${JSON.stringify(text)} is not a leaf`);
    }
    return leaf;
  }

  saveRestore(leaf: number): Promise<void> {
    return writeAtomically(this.restorePath, String(leaf));
  }

  /**
   * The state kept, verified again, its keys and the keys known revoked;
   * undefined when none; throws why it is refused (a bundle signed by a
   * revoked key among them).
   */
  async load(): Promise<{ state: State; jwks: Jwks; revoked: ReadonlySet<string> } | undefined> {
    let text: string | undefined;
    let modified: Date | undefined;
    try {
      text = await readIfAny(this.path);
      modified = text === undefined ? undefined : (await stat(this.path)).mtime;
    } catch (error) {
      throw new Error(`cannot read it: ${(error as Error).message}`);
    }
    if (text === undefined) {
      return undefined;
    }
    let file: Partial<CacheFile> | null;
    try {
      file = JSON.parse(text) as Partial<CacheFile> | null;
    } catch (error) {
      throw new Error(`it is not a cache: ${(error as Error).message}`);
    }
    if (typeof file !== "object" || file === null || !Array.isArray(file.bundles) || !Array.isArray(file.jwks?.keys)) {
      throw new Error("it is not a cache: its fields are missing");
    }
    if (typeof file.revision !== "number") {
      throw new Error("it is not a cache: its revision is not a number");
    }
    try {
      exactInteger("its revision", file.revision);
      for (const cached of file.bundles) exactInteger("a bundle's revision", cached.revision);
    } catch (error) {
      throw new Error(`it is not a cache: ${(error as Error).message}`);
    }
    if (file.format !== FORMAT) {
      throw new Error(`its format ${String(file.format)} is not ${FORMAT}`);
    }
    if (file.namespace !== this.namespace || JSON.stringify(file.names) !== JSON.stringify(this.names)) {
      throw new Error(
        `it holds namespace ${String(file.namespace)} ${JSON.stringify(file.names)}, ` +
          `not ${this.namespace} ${JSON.stringify(this.names)}`,
      );
    }
    const revokedIds: unknown = file.revoked_key_ids ?? [];
    if (!Array.isArray(revokedIds) || !revokedIds.every((kid) => typeof kid === "string")) {
      throw new Error("it is not a cache: its revoked key ids are not strings");
    }
    const revoked: ReadonlySet<string> = new Set(revokedIds);
    const bundles: Record<string, VerifiedBundle> = {};
    for (const cached of file.bundles) {
      let kid;
      try {
        kid = keyId(cached.jws);
      } catch (error) {
        throw new Error(`a bundle does not verify: ${(error as Error).message}`);
      }
      if (revoked.has(kid)) {
        throw new Error(`a bundle is signed by revoked key ${JSON.stringify(kid)}`);
      }
      let claims;
      try {
        claims = await verify(cached.jws, file.jwks);
      } catch (error) {
        throw new Error(`a bundle does not verify: ${(error as Error).message}`);
      }
      const prefix = `${this.namespace}/`;
      if (!claims.sub.startsWith(prefix)) {
        throw new Error(`a bundle of ${claims.sub} is in it`);
      }
      const name = claims.sub.slice(prefix.length);
      bundles[name] = {
        name,
        version: claims.ver,
        ...(claims.label === undefined ? {} : { label: claims.label }),
        digest: claims.digest,
        revision: cached.revision,
        keyId: kid,
        body: claims.body,
        jws: cached.jws,
      };
    }
    const verifiedAt =
      file.verified_at_unix_ms === undefined ? (modified ?? new Date()) : new Date(file.verified_at_unix_ms);
    return {
      state: { namespace: this.namespace, revision: file.revision, bundles, source: "cache", verifiedAt },
      jwks: file.jwks,
      revoked,
    };
  }

  /**
   * Keeps `state` as the last-known-good one, with the keys that verified
   * it and the ids of the keys known revoked.
   */
  save(state: State, jwks: Jwks, revoked: ReadonlySet<string> = new Set()): Promise<void> {
    const file: CacheFile = {
      format: FORMAT,
      namespace: this.namespace,
      names: [...this.names],
      revision: state.revision,
      jwks,
      ...(revoked.size === 0 ? {} : { revoked_key_ids: [...revoked].sort() }),
      bundles: Object.keys(state.bundles)
        .sort()
        .map((name) => {
          const bundle = state.bundles[name] as VerifiedBundle;
          return { jws: bundle.jws, revision: bundle.revision };
        }),
      verified_at_unix_ms: state.verifiedAt.getTime(),
    };
    return writeAtomically(this.path, JSON.stringify(file));
  }
}
