/**
 * Metrics and traces through OpenTelemetry's API, when the application
 * installed `@opentelemetry/api` (an optional peer dependency) and
 * registered a provider; nothing otherwise. The instruments:
 *
 * - `policyhub.runtime.decisions` (counter): states decided, by `outcome`
 *   (`applied`, `rejected`) and `policyhub.namespace`;
 * - `policyhub.runtime.disconnections` (counter): streams lost, by
 *   `policyhub.namespace`;
 * - `policyhub.runtime.revision` (gauge): the revision in force;
 * - a span `policyhub.runtime.decide` around each decision, with the
 *   revision and the outcome.
 *
 * @module
 */

import { createRequire } from "node:module";

type Api = typeof import("@opentelemetry/api");

/** The API when installed; undefined otherwise. */
const api: Api | undefined = await import("@opentelemetry/api").catch(() => undefined);

const version: string = (createRequire(import.meta.url)("../package.json") as { version: string }).version;

/** What a subscription records. */
export class Telemetry {
  private readonly attributes: { "policyhub.namespace": string };
  private readonly decisions;
  private readonly disconnections;
  private readonly revision;
  private readonly tracer;

  constructor(namespace: string) {
    this.attributes = { "policyhub.namespace": namespace };
    const meter = api?.metrics.getMeter("@policyhub/runtime", version);
    this.decisions = meter?.createCounter("policyhub.runtime.decisions", {
      description: "States decided, by outcome",
    });
    this.disconnections = meter?.createCounter("policyhub.runtime.disconnections", {
      description: "Streams to the server lost",
    });
    this.revision = meter?.createGauge("policyhub.runtime.revision", { description: "The revision in force" });
    this.tracer = api?.trace.getTracer("@policyhub/runtime", version);
  }

  /** Runs a decision of `revision` in a span; `work` says its outcome. */
  async decide<T>(revision: number, work: () => Promise<{ outcome: string; value: T }>): Promise<T> {
    const record = (outcome: string): void => {
      this.decisions?.add(1, { ...this.attributes, outcome });
    };
    if (this.tracer === undefined || api === undefined) {
      const { outcome, value } = await work();
      record(outcome);
      return value;
    }
    const otel = api;
    return this.tracer.startActiveSpan(
      "policyhub.runtime.decide",
      { attributes: { ...this.attributes, "policyhub.revision": revision } },
      async (span) => {
        try {
          const { outcome, value } = await work();
          span.setAttribute("policyhub.outcome", outcome);
          record(outcome);
          return value;
        } catch (error) {
          span.setStatus({ code: otel.SpanStatusCode.ERROR, message: String(error) });
          throw error;
        } finally {
          span.end();
        }
      },
    );
  }

  /** The revision now in force. */
  inForce(revision: number): void {
    this.revision?.record(revision, this.attributes);
  }

  /** A stream was lost. */
  disconnected(): void {
    this.disconnections?.add(1, this.attributes);
  }
}
