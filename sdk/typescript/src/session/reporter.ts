/**
 * Reports of APPLIED and REJECTED: when they go ({@link reportDelay}), the
 * outcomes waiting for their report ({@link Reports}) and where one
 * connection's reports go ({@link Reporter}).
 *
 * @module
 */

import type * as grpc from "@grpc/grpc-js";
import { status as grpcStatus } from "@grpc/grpc-js";

import { monotonicMs } from "../clock.js";
import {
  type BundleServiceClient,
  type ChannelSettings,
  StreamReader,
  type Waker,
  message,
  metadata,
  unary,
} from "../connection.js";
import type { PolicyApplyStatus__Input as PolicyApplyStatus } from "../generated/policyhub/v1/PolicyApplyStatus.js";
import type { ReportStatusRequest__Input as ReportStatusRequest } from "../generated/policyhub/v1/ReportStatusRequest.js";
import type { ReportStatusResponse } from "../generated/policyhub/v1/ReportStatusResponse.js";
import type { Revision } from "../state.js";
import type { Settings } from "./settings.js";

/** How long after an outcome a runtime reports it: a random moment in the spread's second half. */
export function reportDelay(spreadMs: number): number {
  return spreadMs / 2 + (spreadMs / 2) * Math.random();
}

/** The outcomes not yet reported, by policy, and their revision. */
export class Reports {
  private readonly pendingReports = new Map<string, PolicyApplyStatus>();
  private pendingRevision = 0;

  constructor(private readonly settings: Settings) {}

  /** Queues the outcome of every bundle of `revision`. */
  queue(
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
  pending(): boolean {
    return this.pendingReports.size > 0;
  }

  /** Sends the queued outcomes; keeps them for the next try on failure. */
  async flush(reporter: Reporter): Promise<void> {
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
    } catch (error) {
      // Kept for the next try, on this connection or the next.
      this.settings.logger.warn(`cannot report the applied state; retrying later: ${message(error)}`);
    }
  }
}

/**
 * Where one connection's reports go: a `ReportStatusStream` opened at the
 * first report, each report answered before the next is sent; or one
 * `ReportStatus` call per report where the server does not serve the
 * stream or will not hold another one.
 */
export class Reporter {
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
    const until = monotonicMs() + this.timeoutMs;
    while (!reader.pending && monotonicMs() < until) {
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
