// Reads verified policy through the agent with OpenFeature's OFREP provider.
import { OpenFeature } from '@openfeature/server-sdk';
import { OFREPProvider } from '@openfeature/ofrep-provider';

const baseUrl = process.env.AGENT ?? 'http://127.0.0.1:7070';
await OpenFeature.setProviderAndWait(new OFREPProvider({ baseUrl }));
const client = OpenFeature.getClient();

// One value: the JSON Pointer after namespace/policy.
const maxAmount = await client.getNumberValue('payments/card-limits/maxAmount', 0);
// The whole policy, an object flag, with where it came from.
const policy = await client.getObjectDetails('payments/card-limits', {});
const { version, source } = policy.flagMetadata;
console.log(`maxAmount ${maxAmount}, version ${version} (${policy.variant}) from the ${source}`);
await OpenFeature.close();
