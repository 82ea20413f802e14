// Evaluates flags through the official OpenFeature server SDK and its OFREP
// provider against an agent, for tests/api/openfeature.rs: the evaluations
// are a JSON array in the last argument, each
//   {"type": "boolean"|"string"|"integer"|"float"|"object", "key", "default",
//    "context"?}
// or {"bulk": true, "etag"?} (a bulk evaluation through the provider's own
// OFREP client, with If-None-Match when an ETag is given), and one JSON line
// per evaluation is printed: {value, variant, reason, errorCode, metadata},
// or {status, etag, keys} for a bulk one.
//
// Environment:
//   OPENFEATURE_NODE_MODULES  the node_modules holding the SDK (required)
//   AGENT                     the agent's base URL
//   AGENT_TOKEN               its bearer token, if it asks for one

import { createRequire } from 'node:module';
import { join, resolve } from 'node:path';

const modules = process.env.OPENFEATURE_NODE_MODULES;
if (!modules) {
  console.error('OPENFEATURE_NODE_MODULES must name the node_modules holding the SDK');
  process.exit(2);
}
const require = createRequire(join(resolve(modules), 'index.js'));
const { OpenFeature } = require('@openfeature/server-sdk');
const { OFREPProvider } = require('@openfeature/ofrep-provider');
const { OFREPApi } = require('@openfeature/ofrep-core');

const baseUrl = process.env.AGENT ?? 'http://127.0.0.1:7070';
const headers = process.env.AGENT_TOKEN ? [['Authorization', `Bearer ${process.env.AGENT_TOKEN}`]] : [];
await OpenFeature.setProviderAndWait(new OFREPProvider({ baseUrl, headers }));
const client = OpenFeature.getClient();
const read = {
  boolean: (key, fallback, context) => client.getBooleanDetails(key, fallback, context),
  string: (key, fallback, context) => client.getStringDetails(key, fallback, context),
  integer: (key, fallback, context) => client.getNumberDetails(key, fallback, context),
  float: (key, fallback, context) => client.getNumberDetails(key, fallback, context),
  object: (key, fallback, context) => client.getObjectDetails(key, fallback, context),
};

for (const evaluation of JSON.parse(process.argv.at(-1))) {
  if (evaluation.bulk) {
    const request = { headers: [...headers] };
    if (evaluation.etag) request.headers.push(['If-None-Match', evaluation.etag]);
    const result = await new OFREPApi(baseUrl).postBulkEvaluateFlags({ context: {} }, request);
    console.log(JSON.stringify({
      status: result.httpStatus,
      etag: result.httpResponse.headers.get('ETag'),
      keys: result.value?.flags?.map((flag) => flag.key) ?? null,
    }));
    continue;
  }
  const details = await read[evaluation.type](evaluation.key, evaluation.default, evaluation.context ?? {});
  console.log(JSON.stringify({
    value: details.value,
    variant: details.variant ?? null,
    reason: details.reason ?? null,
    errorCode: details.errorCode ?? null,
    metadata: details.flagMetadata ?? {},
  }));
}
await OpenFeature.close();
