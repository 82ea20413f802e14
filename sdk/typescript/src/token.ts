/**
 * A bearer token read from a file, as a workload holds one: Kubernetes
 * projects a ServiceAccount token into a file and replaces it (an atomic
 * swap of a symlink) well before it expires. Every call looks at the
 * file's metadata (a `stat`, which follows the symlink) and reads the file
 * again only when it changed, so the next call carries the new token. An
 * empty or unreadable file keeps the last good token.
 *
 * A file is taken as unchanged while its device, inode, size, modification
 * and status-change times are those of the last read. A file rewritten in
 * place within one tick of the file system's clock keeps its times, so one
 * modified less than two seconds before a read is read again on every call
 * until it has settled, as git treats a "racily clean" index entry.
 *
 * @module
 */

import { type BigIntStats, readFileSync, statSync } from "node:fs";

/** Gives the token to send, if any. */
export type TokenSource = () => string | undefined;

/**
 * How long after its last modification a file's metadata is not trusted to
 * tell a change, in nanoseconds: it is read again on every call meanwhile.
 */
const SETTLING_NS = 2_000_000_000n;

/** What identifies one version of a file's contents without reading them. */
function stamp(stats: BigIntStats): string {
  return [stats.dev, stats.ino, stats.size, stats.mtimeNs, stats.ctimeNs].join(":");
}

/** A token source that reads `path` again whenever it changed. */
export function tokenFile(path: string): TokenSource {
  let token: string | undefined;
  // The stamp of the file as read last, once settled: while the file shows
  // it, it is not read again.
  let readAs: string | undefined;
  return () => {
    try {
      const stats = statSync(path, { bigint: true });
      const current = stamp(stats);
      if (current === readAs) {
        return token;
      }
      // Read after the stamp was taken: a change in between shows in the
      // next call's stamp, and is read then.
      const read = readFileSync(path, "utf8").trim();
      const settled = BigInt(Date.now()) * 1_000_000n - stats.mtimeNs >= SETTLING_NS;
      readAs = settled ? current : undefined;
      if (read !== "") {
        token = read;
      }
    } catch {
      // The last good token is kept while the file cannot be read.
      readAs = undefined;
    }
    return token;
  };
}
