/**
 * A bearer token read from a file again on every call, as a Kubernetes
 * projected ServiceAccount token is rotated in place (its symlink swapped):
 * the next call carries the new token. An empty or unreadable file keeps
 * the last good token.
 *
 * @module
 */

import { readFileSync } from "node:fs";

/** Gives the token to send, if any. */
export type TokenSource = () => string | undefined;

/** A token source that reads `path` again on every call. */
export function tokenFile(path: string): TokenSource {
  let token: string | undefined;
  return () => {
    try {
      const read = readFileSync(path, "utf8").trim();
      if (read !== "") {
        token = read;
      }
    } catch {
      // The last good token is kept while the file cannot be read.
    }
    return token;
  };
}
