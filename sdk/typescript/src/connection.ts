/**
 * One connection to the server: the generated `BundleService` client over
 * a channel of its own, the token attached to every call, calls as
 * promises, a stream read one item at a time ({@link StreamReader}), and
 * how a session ends ({@link Failure}).
 *
 * @module
 */

import { fileURLToPath } from "node:url";

import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";

import type { Jwks } from "./bundle.js";
import { monotonicMs } from "./clock.js";
import type { ProtoGrpcType } from "./generated/bundle_service.js";
import type { GetSigningKeysResponse } from "./generated/policyhub/v1/GetSigningKeysResponse.js";
import type { BundleServiceClient } from "./generated/policyhub/v1/BundleService.js";
import type { TokenSource } from "./token.js";

export type { BundleServiceClient };

/** The protos the package carries, loaded once. */
let service: ProtoGrpcType["policyhub"]["v1"]["BundleService"] | undefined;

function bundleService(): ProtoGrpcType["policyhub"]["v1"]["BundleService"] {
  if (service === undefined) {
    const definition = protoLoader.loadSync("policyhub/v1/bundle_service.proto", {
      includeDirs: [fileURLToPath(new URL("./proto/", import.meta.url))],
      longs: String,
      enums: String,
      defaults: true,
      oneofs: true,
    });
    service = (grpc.loadPackageDefinition(definition) as unknown as ProtoGrpcType).policyhub.v1.BundleService;
  }
  return service;
}

/** TLS to an `https://` server: its CA, and the runtime's own certificate for mTLS. An `http://` address is plaintext, TLS options or not. */
export interface TlsOptions {
  /** PEM of the CA that signed the server's certificate; the system's CAs when absent. */
  ca?: Buffer | string;
  /** PEM of the runtime's certificate (mTLS), with `key`. */
  cert?: Buffer | string;
  /** PEM of the runtime's private key (mTLS), with `cert`. */
  key?: Buffer | string;
  /** The name the server's certificate must carry, when not the address's host. */
  serverName?: string;
}

const pem = (value: Buffer | string | undefined): Buffer | null =>
  value === undefined ? null : Buffer.isBuffer(value) ? value : Buffer.from(value);

/** What a channel needs to know. */
export interface ChannelSettings {
  tls: TlsOptions | undefined;
  token: TokenSource | undefined;
  /** The heartbeat interval expected: paces keepalive pings and the connect timeout. */
  heartbeatIntervalMs: number;
}

/** A client of `address` (`http://host:port` or `https://host:port`). */
export function connect(address: string, settings: ChannelSettings): BundleServiceClient {
  let url: URL;
  try {
    url = new URL(address);
  } catch {
    throw new Failure("config", `${JSON.stringify(address)} is not a URL`);
  }
  if (url.protocol !== "http:" && url.protocol !== "https:") {
    throw new Failure("config", `${JSON.stringify(address)} is not an http or https URL`);
  }
  // The scheme alone says whether TLS applies: TLS settings configure
  // https:// addresses and never turn an http:// one into TLS.
  const secure = url.protocol === "https:";
  const port = url.port === "" ? (url.protocol === "https:" ? "443" : "80") : url.port;
  const target = `${url.hostname}:${port}`;
  const tls = settings.tls ?? {};
  const credentials = secure
    ? grpc.credentials.createSsl(pem(tls.ca), pem(tls.key), pem(tls.cert))
    : grpc.credentials.createInsecure();
  const interval = settings.heartbeatIntervalMs;
  const options: grpc.ChannelOptions = {
    // HTTP/2 pings find a half-open connection even when the server's
    // heartbeats are far apart.
    "grpc.keepalive_time_ms": interval,
    "grpc.keepalive_timeout_ms": interval,
    "grpc.keepalive_permit_without_calls": 1,
    // Each subscription has a connection of its own, as a runtime would.
    "grpc.use_local_subchannel_pool": 1,
    "grpc.enable_retries": 0,
  };
  if (tls.serverName !== undefined) {
    options["grpc.ssl_target_name_override"] = tls.serverName;
  }
  const Client = bundleService();
  return new Client(target, credentials, options);
}

/** Waits until the channel is connected, within `timeoutMs`. */
export function ready(client: grpc.Client, address: string, timeoutMs: number): Promise<void> {
  return new Promise((resolve, reject) => {
    // gRPC takes a deadline on the wall clock, and turns it into a timer at once.
    client.waitForReady(Date.now() + timeoutMs, (error) => {
      if (!(error instanceof Error)) {
        resolve();
      } else {
        reject(new Failure("transient", `cannot connect to ${address}: ${error.message}`));
      }
    });
  });
}

/** The call metadata: the token, when there is one. */
export function metadata(token: TokenSource | undefined): grpc.Metadata {
  const metadata = new grpc.Metadata();
  const value = token?.();
  if (value !== undefined) {
    metadata.set("authorization", `Bearer ${value.trim()}`);
  }
  return metadata;
}

/** The name of a status code, as the Rust library writes it. */
export function codeName(code: number): string {
  const name = grpc.status[code];
  return typeof name === "string"
    ? name
        .toLowerCase()
        .split("_")
        .map((word) => word.charAt(0).toUpperCase() + word.slice(1))
        .join("")
    : `Code(${code})`;
}

/** Whether a status refuses the caller's credentials, which new ones may fix. */
export function refusesCredentials(code: number | undefined): boolean {
  return code === grpc.status.UNAUTHENTICATED || code === grpc.status.PERMISSION_DENIED;
}

/** How a session ended. */
export class Failure extends Error {
  override name = "Failure";

  constructor(
    /**
     * `transient`: retry after a backoff; `history`: the server showed a
     * history that does not extend the one verified, retry applying nothing
     * meanwhile; `permanent`: the server refused for good; `config`: the
     * subscription cannot work as configured; `gone`: nobody listens.
     */
    readonly kind: "transient" | "history" | "permanent" | "config" | "gone",
    reason: string,
    /** The gRPC status code of a refusal. */
    readonly code?: number,
    /** `cause`: what failed, such as gRPC's `ServiceError` (its code, details and metadata). */
    options?: ErrorOptions,
  ) {
    super(reason, options);
  }

  /** The failure a status says; gRPC's error is its `cause`. */
  static fromStatus(error: Partial<grpc.StatusObject> & { message?: string }): Failure {
    const code = error.code ?? grpc.status.UNKNOWN;
    const reason = `${codeName(code)}: ${error.details ?? error.message ?? ""}`;
    switch (code) {
      case grpc.status.UNAUTHENTICATED:
      case grpc.status.PERMISSION_DENIED:
      case grpc.status.INVALID_ARGUMENT:
      case grpc.status.FAILED_PRECONDITION:
      case grpc.status.UNIMPLEMENTED:
        return new Failure("permanent", reason, code, { cause: error });
      default:
        return new Failure("transient", reason, code, { cause: error });
    }
  }
}

/** The text of whatever was thrown, as a failure's or an event's reason. */
export function message(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

/** A unary call as a promise, within `timeoutMs`; rejects with the status. */
export function unary<T>(
  call: (metadata: grpc.Metadata, options: grpc.CallOptions, callback: grpc.requestCallback<T>) => unknown,
  token: TokenSource | undefined,
  timeoutMs: number,
): Promise<T> {
  return new Promise((resolve, reject) => {
    // gRPC takes a deadline on the wall clock, and turns it into a timer at once.
    call(metadata(token), { deadline: Date.now() + timeoutMs }, (error, value) => {
      if (error !== null || value === undefined) {
        reject(error ?? new Error("no answer"));
      } else {
        resolve(value);
      }
    });
  });
}

/** The keys that verify bundles, fetched from the server, and the ids of the revoked ones. */
export async function fetchKeys(
  client: BundleServiceClient,
  token: TokenSource | undefined,
  timeoutMs: number,
): Promise<{ jwks: Jwks; revoked: ReadonlySet<string> }> {
  try {
    const response = await unary<GetSigningKeysResponse>(
      (metadata, options, callback) => client.getSigningKeys({}, metadata, options, callback),
      token,
      timeoutMs,
    );
    return {
      jwks: { keys: response.keys.map(({ kty, crv, x, kid, alg, use }) => ({ kty, crv, x, kid, alg, use })) },
      revoked: new Set(response.revokedKeyIds),
    };
  } catch (error) {
    throw Failure.fromStatus(error as grpc.ServiceError);
  }
}

/** The longest delay a Node timer takes. */
const MAX_TIMER_MS = 2_147_483_647;

/** Something the loop waits on: woken by news, a deadline or a stop. */
export class Waker {
  private wake: (() => void) | undefined;

  constructor(private readonly signal: AbortSignal) {
    signal.addEventListener(
      "abort",
      () => {
        this.notify();
      },
      { once: true },
    );
  }

  notify(): void {
    const wake = this.wake;
    this.wake = undefined;
    wake?.();
  }

  /**
   * Waits until notified, `until` (on the {@link monotonicMs} clock) or a stop. A wait
   * longer than a timer takes (2147483647 ms; Node fires a longer one after
   * 1 ms) ends at that bound, early: every caller checks the time again.
   */
  async wait(until: number | undefined): Promise<void> {
    if (this.signal.aborted) {
      return;
    }
    await new Promise<void>((resolve) => {
      const delay = until === undefined ? undefined : Math.min(Math.max(0, until - monotonicMs()), MAX_TIMER_MS);
      const timer = delay === undefined ? undefined : setTimeout(resolve, delay);
      this.wake = () => {
        if (timer !== undefined) clearTimeout(timer);
        resolve();
      };
    });
  }
}

/** What a stream gave: a message, its end, or its failure. */
export type Item<T> = { kind: "message"; message: T } | { kind: "end" } | { kind: "error"; error: grpc.ServiceError };

/** A server stream read one item at a time. */
export class StreamReader<T> {
  private readonly items: Item<T>[] = [];
  /** The response headers, once they came. */
  headers: grpc.Metadata | undefined;
  private finished = false;

  constructor(
    readonly stream: grpc.ClientReadableStream<T> | grpc.ClientDuplexStream<unknown, T>,
    private readonly waker: Waker,
  ) {
    stream.on("metadata", (headers: grpc.Metadata) => {
      this.headers = headers;
      waker.notify();
    });
    stream.on("data", (message: T) => {
      this.push({ kind: "message", message });
    });
    stream.on("error", (error: grpc.ServiceError) => {
      this.push({ kind: "error", error });
    });
    stream.on("end", () => {
      this.push({ kind: "end" });
    });
  }

  private push(item: Item<T>): void {
    if (this.finished) {
      return;
    }
    this.finished = item.kind !== "message";
    this.items.push(item);
    this.waker.notify();
  }

  /** The next item, if one came. */
  take(): Item<T> | undefined {
    return this.items.shift();
  }

  /** Whether an item waits. */
  get pending(): boolean {
    return this.items.length > 0;
  }

  /** Whether the stream failed or ended before its headers. */
  get failedEarly(): Item<T> | undefined {
    return this.headers === undefined ? this.items.find((item) => item.kind !== "message") : undefined;
  }

  /** Stops reading: the call is cancelled. */
  cancel(): void {
    this.finished = true;
    this.stream.cancel();
  }
}
