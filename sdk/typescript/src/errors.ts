/**
 * How a subscription stops for good ({@link WatchError}).
 *
 * @module
 */

/** Why a subscription stopped for good. */
export class WatchError extends Error {
  override name = "WatchError";

  constructor(
    /** `refused`: the server refused the subscription itself; `config`: it is misconfigured. */
    readonly kind: "refused" | "config",
    message: string,
    /** The gRPC status code of a refusal. */
    readonly code?: number,
  ) {
    super(message);
  }
}
