// Sign-in with an OpenID Connect provider the server lists
// (`GET /v1/identityProviders`): the authorization code flow with PKCE, as a
// public client (no secret), from this page. The redirect URI is the
// console's own address, `<origin>/console/`; the provider answers there with
// `?code=…&state=…`, which `complete` takes and removes from the address.
//
// What a sign-in in progress needs (the PKCE verifier, state, nonce, the
// route to return to) is kept in this tab's sessionStorage until the
// provider answers; the ID token (the bearer token) and the refresh token
// are kept there too, never in a URL or a cookie.

import { token } from './api.js';

const PENDING_KEY = 'policyhub.signin';
const SESSION_KEY = 'policyhub.oidc';
const SIGNED_OUT_KEY = 'policyhub.signedOut';

// The address the provider sends people back to: register it as a redirect
// URI of the client.
const redirectUri = () => `${window.location.origin}/console/`;

// The host a provider is named by on the sign-in page.
export const issuerHost = (issuer) => new URL(issuer).host;

// A refusal of the sign-in, told to the person as it is.
export class SignInError extends Error {}

const base64url = (bytes) => btoa(String.fromCharCode(...new Uint8Array(bytes)))
  .replaceAll('+', '-').replaceAll('/', '_').replace(/=+$/, '');

const random = () => base64url(crypto.getRandomValues(new Uint8Array(32)));

// The claims of a JWT, read without checking its signature: the server
// checks it on every call.
function claims(jwt) {
  const payload = jwt.split('.')[1] ?? '';
  const binary = atob(payload.replaceAll('-', '+').replaceAll('_', '/'));
  return JSON.parse(new TextDecoder().decode(Uint8Array.from(binary, (c) => c.charCodeAt(0))));
}

async function discovery(issuer) {
  const url = `${issuer.replace(/\/$/, '')}/.well-known/openid-configuration`;
  const response = await fetch(url, { credentials: 'omit', cache: 'no-store' });
  if (!response.ok) throw new SignInError(`${issuerHost(issuer)} did not give its discovery document (HTTP ${response.status}).`);
  return response.json();
}

// Sends the person to `provider`'s authorization endpoint; `route` (a hash
// route of the console) is where the console returns once signed in.
export async function begin(provider, route) {
  const metadata = await discovery(provider.issuer);
  const verifier = random();
  const challenge = base64url(await crypto.subtle.digest('SHA-256', new TextEncoder().encode(verifier)));
  const pending = {
    issuer: provider.issuer,
    clientId: provider.clientId,
    scopes: provider.scopes ?? [],
    tokenEndpoint: metadata.token_endpoint,
    verifier,
    state: random(),
    nonce: random(),
    route,
  };
  sessionStorage.setItem(PENDING_KEY, JSON.stringify(pending));
  const scopes = provider.scopes?.length ? provider.scopes : ['openid'];
  // A provider issues a refresh token for `offline_access` only when consent
  // is asked (OpenID Connect Core §11); after "Sign out" the person is asked
  // who they are again.
  const prompt = [
    sessionStorage.getItem(SIGNED_OUT_KEY) ? 'login' : null,
    scopes.includes('offline_access') ? 'consent' : null,
  ].filter(Boolean).join(' ');
  const url = new URL(metadata.authorization_endpoint);
  for (const [key, value] of Object.entries({
    response_type: 'code',
    client_id: provider.clientId,
    redirect_uri: redirectUri(),
    scope: scopes.join(' '),
    state: pending.state,
    nonce: pending.nonce,
    code_challenge: challenge,
    code_challenge_method: 'S256',
    prompt,
  })) {
    if (value) url.searchParams.set(key, value);
  }
  window.location.assign(url);
}

async function tokenRequest(tokenEndpoint, form) {
  const response = await fetch(tokenEndpoint, {
    method: 'POST',
    headers: { 'Content-Type': 'application/x-www-form-urlencoded' },
    body: new URLSearchParams(form),
    credentials: 'omit',
    cache: 'no-store',
  });
  const answer = await response.json().catch(() => ({}));
  if (!response.ok || !answer.id_token) {
    throw new SignInError(`The provider refused: ${answer.error_description ?? answer.error ?? `HTTP ${response.status}`}.`);
  }
  return answer;
}

function keep(session, answer) {
  token.set(answer.id_token);
  sessionStorage.setItem(SESSION_KEY, JSON.stringify({
    ...session,
    refreshToken: answer.refresh_token ?? session.refreshToken ?? null,
  }));
  schedule();
}

// The provider's answer on this page's address, if any: checked (state,
// nonce), exchanged for tokens and removed from the address. Returns the
// route to show then, or null when the address holds no answer; throws a
// SignInError the person should read.
export async function complete() {
  const answer = new URLSearchParams(window.location.search);
  if (!answer.has('state') || !(answer.has('code') || answer.has('error'))) return null;
  const pending = JSON.parse(sessionStorage.getItem(PENDING_KEY) ?? 'null');
  sessionStorage.removeItem(PENDING_KEY);
  // The code leaves the address (and the history) before anything else.
  window.history.replaceState(null, '', `${window.location.pathname}${pending?.route ?? ''}`);
  if (!pending || answer.get('state') !== pending.state) {
    throw new SignInError('This sign-in answer does not belong to a sign-in started in this tab (its state does not match): it was refused. Sign in again.');
  }
  if (answer.has('error')) {
    throw new SignInError(`The provider refused the sign-in: ${answer.get('error_description') ?? answer.get('error')}.`);
  }
  const tokens = await tokenRequest(pending.tokenEndpoint, {
    grant_type: 'authorization_code',
    code: answer.get('code'),
    redirect_uri: redirectUri(),
    client_id: pending.clientId,
    code_verifier: pending.verifier,
  });
  if (claims(tokens.id_token).nonce !== pending.nonce) {
    throw new SignInError('The ID token does not carry the nonce of this sign-in: it was refused. Sign in again.');
  }
  sessionStorage.removeItem(SIGNED_OUT_KEY);
  const { issuer, clientId, scopes, tokenEndpoint } = pending;
  keep({ issuer, clientId, scopes, tokenEndpoint }, tokens);
  return pending.route;
}

// The provider of the current sign-in ({issuer, clientId, scopes, …}), when
// it was made here.
export function provider() {
  return JSON.parse(sessionStorage.getItem(SESSION_KEY) ?? 'null');
}

export function signOut() {
  sessionStorage.removeItem(SESSION_KEY);
  sessionStorage.setItem(SIGNED_OUT_KEY, 'true');
  clearTimeout(timer);
}

const expiredListeners = new Set();

// `callback` runs when the token expires and cannot be refreshed.
export function onExpired(callback) {
  expiredListeners.add(callback);
}

let timer = null;
let refreshing = null;

// Refreshes the ID token with the refresh token: the new one is kept, or
// the expiry is told. Resolves once done either way.
function refresh() {
  refreshing ??= (async () => {
    const session = provider();
    try {
      if (!session?.refreshToken) throw new SignInError('no refresh token');
      keep(session, await tokenRequest(session.tokenEndpoint, {
        grant_type: 'refresh_token',
        refresh_token: session.refreshToken,
        client_id: session.clientId,
      }));
    } catch {
      if (session) expiredListeners.forEach((callback) => callback());
    } finally {
      refreshing = null;
    }
  })();
  return refreshing;
}

// Seconds before `exp` to refresh: a minute, or a quarter of a short
// token's life.
function margin(jwt) {
  const { exp, iat } = claims(jwt);
  return Math.min(60, Math.max(1, (exp - (iat ?? exp - 240)) / 4));
}

const secondsLeft = (jwt) => claims(jwt).exp - Date.now() / 1000;

// Sets the refresh of the current token for shortly before it expires.
export function schedule() {
  clearTimeout(timer);
  const jwt = token.get();
  if (!provider() || !jwt) return;
  const delay = Math.max(0, secondsLeft(jwt) - margin(jwt)) * 1000;
  timer = setTimeout(refresh, Math.min(delay, 2 ** 31 - 1));
}

// Before an API call: a token of this sign-in that is about to expire (a
// timer of a background tab may have run late) is refreshed first.
export async function fresh() {
  const jwt = token.get();
  if (provider() && jwt && secondsLeft(jwt) < margin(jwt)) await refresh();
}
