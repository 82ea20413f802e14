// The TypeScript runtime (@policyhub/runtime, built into dist/) behind the
// conformance kit's test-service protocol, over node:http: each runtime the
// kit starts is one Subscription; what it says becomes the runtime's view.
//
//   GET /                the implementation's name and capabilities
//   POST /runtimes       start one runtime; 201, Location: /runtimes/{id}
//   GET /runtimes/{id}   what it did so far
//   DELETE /runtimes/{id} stop it (its cache stays); 204
//
// Usage: node test/conformance-service.mjs [--listen 127.0.0.1:0]; it
// prints its address (http://host:port) once it listens.

import { readFileSync } from "node:fs";
import { createServer } from "node:http";
import { parseArgs } from "node:util";

import { Subscription, tokenFile } from "../dist/index.js";

const { values } = parseArgs({ options: { listen: { type: "string", default: "127.0.0.1:8112" } } });
const listen = values.listen ?? "127.0.0.1:8112";
const colon = listen.lastIndexOf(":");
const [host, port] = [listen.slice(0, colon), Number(listen.slice(colon + 1))];

/** The runtimes started, by id: their view, and how to stop them. */
const runtimes = new Map();
let next = 0;

const capabilities = ["cache", "reports", "history", "witnesses", "endpoints", "revocation", "fleet"];

/** The library's options for the kit's settings; throws a message when one cannot be honoured. */
function options(settings) {
  if (!Array.isArray(settings.endpoints) || settings.endpoints.length === 0) {
    throw new Error("at least one endpoint");
  }
  const options = {
    endpoints: settings.endpoints,
    namespace: settings.namespace,
    names: settings.names ?? [],
  };
  if (settings.runtimeId != null) options.runtime = { id: settings.runtimeId };
  if (settings.cacheDir != null) options.cacheDir = settings.cacheDir;
  if (settings.heartbeatIntervalMs != null) options.heartbeatIntervalMs = settings.heartbeatIntervalMs;
  if (settings.backoff != null) options.backoff = settings.backoff;
  if (settings.rebalanceIntervalMs != null) options.rebalanceIntervalMs = settings.rebalanceIntervalMs;
  if (settings.maxCheckpointAgeMs != null) options.maxCheckpointAgeMs = settings.maxCheckpointAgeMs;
  if (settings.witnesses != null) options.witnesses = settings.witnesses;
  if (settings.caFile != null) options.tls = { ca: readFileSync(settings.caFile) };
  if (settings.tokenFile != null) options.token = tokenFile(settings.tokenFile);
  return options;
}

/** A state as the protocol shows it. */
function stateView(state) {
  const policies = {};
  for (const [name, bundle] of Object.entries(state.bundles)) {
    policies[name] = { version: bundle.version, digest: bundle.digest, body: bundle.body };
  }
  return { revision: state.revision, source: state.source, policies };
}

/** Writes what the subscription says into `view`. */
function record(view, event) {
  switch (event.type) {
    case "applied":
    case "fromCache": {
      const state = stateView(event.state);
      const versions = Object.fromEntries(Object.entries(state.policies).map(([name, p]) => [name, p.version]));
      view.events.push({ type: "applied", revision: state.revision, source: state.source, policies: versions });
      view.inForce = state;
      break;
    }
    case "rejected":
      view.events.push({ type: "rejected", revision: event.revision, reason: event.reason });
      break;
    case "connected":
      view.events.push({ type: "connected", endpoint: event.endpoint });
      break;
    case "disconnected":
    case "refused":
      view.events.push({ type: "disconnected", reason: event.reason });
      break;
    case "historyRefused":
      view.events.push({ type: "historyRefused", reason: event.reason });
      break;
    case "historyRestored":
      view.events.push({ type: "historyRestored", reason: event.reason });
      break;
    case "checkpointStale":
      view.events.push({ type: "checkpointStale" });
      break;
    case "checkpointFresh":
      view.events.push({ type: "checkpointFresh" });
      break;
  }
}

function start(settings) {
  const subscription = new Subscription(options(settings));
  const id = String(next++);
  const view = { inForce: null, events: [] };
  const controller = new AbortController();
  const done = subscription
    .watch((event) => record(view, event), controller.signal)
    .catch((error) => view.events.push({ type: "disconnected", reason: `ended: ${error.message}` }));
  runtimes.set(id, { view, controller, done });
  return id;
}

function reply(response, status, body, headers = {}) {
  const text = body === undefined ? "" : typeof body === "string" ? body : JSON.stringify(body);
  const type = typeof body === "string" ? "text/plain" : "application/json";
  response.writeHead(status, { ...(text === "" ? {} : { "content-type": type }), ...headers });
  response.end(text);
}

async function body(request) {
  const chunks = [];
  for await (const chunk of request) chunks.push(chunk);
  return JSON.parse(Buffer.concat(chunks).toString("utf8"));
}

const server = createServer(async (request, response) => {
  const path = new URL(request.url ?? "/", "http://service").pathname;
  const runtime = /^\/runtimes\/([^/]+)$/u.exec(path);
  try {
    if (request.method === "GET" && path === "/") {
      return reply(response, 200, { name: "@policyhub/runtime (TypeScript)", capabilities });
    }
    if (request.method === "POST" && path === "/runtimes") {
      let id;
      try {
        id = start(await body(request));
      } catch (error) {
        return reply(response, 400, error.message);
      }
      return reply(response, 201, { id }, { location: `/runtimes/${id}` });
    }
    if (runtime !== null) {
      const id = decodeURIComponent(runtime[1]);
      const running = runtimes.get(id);
      if (running === undefined) {
        return reply(response, 404);
      }
      if (request.method === "GET") {
        return reply(response, 200, running.view);
      }
      if (request.method === "DELETE") {
        runtimes.delete(id);
        running.controller.abort();
        // Stopped, the subscription lets its cache and connection go
        // before the next runtime over the same cache starts.
        await running.done;
        return reply(response, 204);
      }
    }
    return reply(response, 404);
  } catch (error) {
    return reply(response, 500, String(error));
  }
});

server.listen(port, host, () => {
  const address = server.address();
  console.log(`http://${address.address}:${address.port}`);
});
