// An OpenID provider for the tests: oidc-provider (OpenID Certified) with
// two people, the public client `policyhub`, the device authorization grant,
// plain login and consent pages, and a test route that rotates its signing
// key. It listens on 127.0.0.1, on a free port, and prints its issuer URL as
// its first line on standard output.
//
// Environment:
//   OIDC_PROVIDER_MODULE     the oidc-provider package directory (required)
//   OIDC_ID_TOKEN_TTL        ID token lifetime in seconds (default 3600)
//   OIDC_ACCESS_TOKEN_TTL    access token lifetime in seconds (default 3600)
//   OIDC_DEVICE_CODE_TTL     device code lifetime in seconds (default 600)
//   OIDC_REDIRECT_URIS       more redirect URIs of `policyhub`, space-separated
//                            (a browser page at one of their origins, such as
//                            the console's, may call the token endpoint: CORS)
//
// People (login / password, groups):
//   alice / alice-password, payments-readers
//   bob   / bob-password,   payments-operators
//
// POST /test/rotate-key signs from then on with a new key, listed first in
// the JWKS; the old key stays listed with ?keep=true, and is dropped without.

import { generateKeyPairSync, randomBytes } from 'node:crypto';
import { createServer } from 'node:http';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';

const moduleDir = process.env.OIDC_PROVIDER_MODULE;
if (!moduleDir) {
  console.error('OIDC_PROVIDER_MODULE must name the oidc-provider package directory');
  process.exit(2);
}
const moduleFile = (path) => pathToFileURL(join(moduleDir, path)).href;
const { default: Provider } = await import(moduleFile('lib/index.js'));
const { createMemoryAdapter } = await import(moduleFile('lib/adapters/memory_adapter.js'));

const seconds = (name, fallback) => Number.parseInt(process.env[name] ?? '', 10) || fallback;

const people = {
  alice: {
    password: 'alice-password',
    claims: {
      name: 'Alice Example',
      preferred_username: 'alice',
      email: 'alice@example.com',
      email_verified: true,
      groups: ['payments-readers'],
    },
  },
  bob: {
    password: 'bob-password',
    claims: {
      name: 'Bob Example',
      preferred_username: 'bob',
      email: 'bob@example.com',
      email_verified: true,
      groups: ['payments-operators'],
    },
  },
};

const newKey = () => ({
  ...generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey.export({ format: 'jwk' }),
  kid: randomBytes(8).toString('hex'),
  use: 'sig',
  alg: 'RS256',
});

// Sessions, grants and tokens live in one in-memory store, shared by every
// Provider of the process: a rotation builds a new Provider with the new
// keys, and people stay signed in, refresh tokens stay valid.
const adapter = createMemoryAdapter();
const cookieKeys = [randomBytes(32).toString('hex')];
let keys = [newKey()];

function build(issuer) {
  const provider = new Provider(issuer, {
    clients: [
      {
        client_id: 'policyhub',
        application_type: 'native',
        token_endpoint_auth_method: 'none',
        grant_types: [
          'authorization_code',
          'refresh_token',
          'urn:ietf:params:oauth:grant-type:device_code',
        ],
        response_types: ['code'],
        // A native client's loopback redirect matches on any port (RFC 8252).
        redirect_uris: [
          'http://127.0.0.1/callback',
          ...(process.env.OIDC_REDIRECT_URIS ?? '').split(/\s+/).filter(Boolean),
        ],
      },
    ],
    adapter,
    // A browser client (the console) calls the token endpoint from the
    // origin of one of its redirect URIs; a public client only.
    clientBasedCORS: (ctx, origin, client) => client.clientAuthMethod === 'none'
      && client.redirectUris.some((uri) => URL.parse(uri)?.origin === origin),
    pkce: { required: () => true },
    jwks: { keys },
    cookies: { keys: cookieKeys },
    scopes: ['openid', 'offline_access', 'profile', 'email', 'groups'],
    claims: {
      openid: ['sub'],
      profile: ['name', 'preferred_username'],
      email: ['email', 'email_verified'],
      groups: ['groups'],
    },
    // The claims of the granted scopes go into the ID token itself: that is
    // the token policyhub verifies.
    conformIdTokenClaims: false,
    features: {
      devInteractions: { enabled: false },
      deviceFlow: { enabled: true },
      revocation: { enabled: true },
    },
    ttl: {
      IdToken: seconds('OIDC_ID_TOKEN_TTL', 3600),
      AccessToken: seconds('OIDC_ACCESS_TOKEN_TTL', 3600),
      DeviceCode: seconds('OIDC_DEVICE_CODE_TTL', 600),
      RefreshToken: 24 * 3600,
      AuthorizationCode: 60,
      Interaction: 600,
      Session: 24 * 3600,
      Grant: 24 * 3600,
    },
    interactions: { url: (ctx, interaction) => `/interaction/${interaction.uid}` },
    async findAccount(ctx, sub) {
      const person = people[sub];
      return person && { accountId: sub, claims: async () => ({ sub, ...person.claims }) };
    },
  });
  return provider;
}

const escape = (text) => String(text).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);

function page(res, title, body, status = 200) {
  res.writeHead(status, { 'content-type': 'text/html; charset=utf-8', 'cache-control': 'no-store' });
  res.end(`<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>${title}</title></head>
<body><h1>${title}</h1>${body}</body></html>`);
}

function loginPage(res, uid, error) {
  page(res, 'Sign in', `${error ? `<p role="alert">${escape(error)}</p>` : ''}
<form method="post" action="/interaction/${uid}/login">
  <label>Login <input type="text" name="login" autofocus></label>
  <label>Password <input type="password" name="password"></label>
  <button type="submit">Sign in</button>
</form>`, error ? 401 : 200);
}

function consentPage(res, uid, clientId, details) {
  const scopes = (details.missingOIDCScope ?? []).map((scope) => `<li>${escape(scope)}</li>`).join('');
  page(res, 'Authorize', `<p>${escape(clientId)} asks for:</p><ul>${scopes}</ul>
<form method="post" action="/interaction/${uid}/confirm"><button type="submit">Allow</button></form>
<form method="post" action="/interaction/${uid}/abort"><button type="submit">Deny</button></form>`);
}

async function formBody(req) {
  let text = '';
  for await (const chunk of req) text += chunk;
  return new URLSearchParams(text);
}

// The login and consent pages a person goes through.
async function interaction(provider, req, res, uid, action) {
  const details = await provider.interactionDetails(req, res);
  const { prompt, params, session } = details;
  if (req.method === 'GET' && !action) {
    if (prompt.name === 'login') return loginPage(res, uid);
    return consentPage(res, uid, params.client_id, prompt.details);
  }
  if (req.method !== 'POST') return page(res, 'Not found', '', 404);
  switch (action) {
    case 'login': {
      const form = await formBody(req);
      const login = form.get('login') ?? '';
      if (people[login]?.password !== form.get('password')) {
        return loginPage(res, uid, 'wrong login or password');
      }
      return provider.interactionFinished(req, res, { login: { accountId: login } }, { mergeWithLastSubmission: false });
    }
    case 'confirm': {
      const grant = details.grantId
        ? await provider.Grant.find(details.grantId)
        : new provider.Grant({ accountId: session.accountId, clientId: params.client_id });
      if (prompt.details.missingOIDCScope) grant.addOIDCScope(prompt.details.missingOIDCScope.join(' '));
      if (prompt.details.missingOIDCClaims) grant.addOIDCClaims(prompt.details.missingOIDCClaims);
      const grantId = await grant.save();
      return provider.interactionFinished(req, res, { consent: { grantId } }, { mergeWithLastSubmission: true });
    }
    case 'abort':
      return provider.interactionFinished(req, res, {
        error: 'access_denied',
        error_description: 'the person denied the request',
      }, { mergeWithLastSubmission: false });
    default:
      return page(res, 'Not found', '', 404);
  }
}

let provider;
const server = createServer(async (req, res) => {
  try {
    const url = new URL(req.url, 'http://127.0.0.1');
    const match = url.pathname.match(/^\/interaction\/([^/]+)(?:\/([a-z]+))?$/);
    if (match) return await interaction(provider, req, res, match[1], match[2]);
    if (url.pathname === '/test/rotate-key' && req.method === 'POST') {
      keys = url.searchParams.get('keep') === 'true' ? [newKey(), ...keys] : [newKey()];
      provider = build(provider.issuer);
      res.writeHead(200, { 'content-type': 'application/json' });
      return res.end(JSON.stringify({ kid: keys[0].kid }));
    }
    return provider.callback()(req, res);
  } catch (error) {
    if (!res.headersSent) page(res, 'Error', `<p>${escape(error.message)}</p>`, 400);
    else res.end();
  }
});

server.listen(0, '127.0.0.1', () => {
  const issuer = `http://127.0.0.1:${server.address().port}`;
  provider = build(issuer);
  process.stdout.write(`${issuer}\n`);
});
