/**
 * How a subscription stops for good ({@link WatchError}).
 *
 * @module
 */

/**
 * Why a subscription stopped for good. A refusal's `cause` is gRPC's own
 * error (a `ServiceError`: its `code`, `details` and `metadata`, which may
 * carry the server's error details).
 */
export class WatchError extends Error {
  override name = "WatchError";

  constructor(
    /** `refused`: the server refused the subscription itself; `config`: it is misconfigured. */
    readonly kind: "refused" | "config",
    message: string,
    /** The gRPC status code of a refusal. */
    readonly code?: number,
    /** `cause`: what failed, gRPC's error for a refusal. */
    options?: ErrorOptions,
  ) {
    super(message, options);
  }
}
