// The public HTTP/JSON API, the console's only source of data. The bearer
// token (pasted, or the ID token of a sign-in, see oidc.js) lives in this
// tab's session storage: never in a URL, never in a cookie the server could
// read.

const TOKEN_KEY = 'policyhub.token';

export const token = {
  get: () => sessionStorage.getItem(TOKEN_KEY),
  set: (value) => sessionStorage.setItem(TOKEN_KEY, value),
  clear: () => sessionStorage.removeItem(TOKEN_KEY),
};

// A refusal: the HTTP status and the google.rpc.Status the server sent.
export class ApiError extends Error {
  constructor(status, body) {
    super(body.message || `HTTP ${status}`);
    this.status = status;
    this.code = body.code;
    this.details = body.details ?? [];
  }

  // What the refusal names: [{ pointer, field, message }], a schema
  // violation's JSON Pointer into the body (PreconditionFailure) or a
  // request field (BadRequest, such as "requirements[0].range").
  violations() {
    return this.details.flatMap((detail) => [
      ...(detail.violations ?? []).filter((violation) => violation.type === 'SCHEMA')
        .map((violation) => ({ pointer: violation.subject ?? '', message: violation.description })),
      ...(detail.fieldViolations ?? []).map((violation) => ({ field: violation.field, message: violation.description })),
    ]);
  }
}

const listeners = new Set();
let beforeCall = async () => {};

// `callback` runs when the server refuses the token (401).
export function onUnauthenticated(callback) {
  listeners.add(callback);
}

// `hook` runs before each call (to refresh the token); the call waits.
export function beforeEachCall(hook) {
  beforeCall = hook;
}

// Calls `path` under /v1/. `query` values that are arrays repeat the
// parameter, as the API's repeated fields expect. A 401 tells the
// `onUnauthenticated` callbacks, unless `notify` is false.
async function call(method, path, { query = {}, body, notify = true } = {}) {
  const url = new URL(`/v1/${path}`, window.location.origin);
  for (const [key, value] of Object.entries(query)) {
    for (const item of [value].flat()) {
      if (item !== undefined && item !== null && item !== '') url.searchParams.append(key, item);
    }
  }
  await beforeCall();
  const headers = token.get() ? { Authorization: `Bearer ${token.get()}` } : {};
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  const response = await fetch(url, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    cache: 'no-store',
    credentials: 'omit',
  });
  const text = await response.text();
  const json = text ? JSON.parse(text) : {};
  if (!response.ok) {
    if (response.status === 401 && notify) listeners.forEach((callback) => callback());
    throw new ApiError(response.status, json);
  }
  return json;
}

// The SSE watch of `namespace`'s active versions (WatchActive), resuming
// after `sinceRevision`: the response, whose body streams. A fetch rather
// than an EventSource, which could not send the token.
export async function watchActive(namespace, { names = [], sinceRevision = 0, signal }) {
  const url = new URL(`/v1/${paths.namespace(namespace)}/active:watch`, window.location.origin);
  names.forEach((name) => url.searchParams.append('names', name));
  if (sinceRevision) url.searchParams.set('sinceRevision', sinceRevision);
  await beforeCall();
  const response = await fetch(url, {
    headers: { Authorization: `Bearer ${token.get()}`, Accept: 'text/event-stream' },
    cache: 'no-store',
    credentials: 'omit',
    signal,
  });
  if (!response.ok) {
    const text = await response.text();
    if (response.status === 401) listeners.forEach((callback) => callback());
    throw new ApiError(response.status, text ? JSON.parse(text) : {});
  }
  return response;
}

export const get = (path, query) => call('GET', path, { query });
export const post = (path, body) => call('POST', path, { body: body ?? {} });
export const put = (path, body) => call('PUT', path, { body: body ?? {} });
export const patch = (path, body) => call('PATCH', path, { body: body ?? {} });
export const remove = (path) => call('DELETE', path);

const segment = encodeURIComponent;

export const paths = {
  namespace: (namespace) => `namespaces/${segment(namespace)}`,
  policy: (namespace, name) => `namespaces/${segment(namespace)}/policies/${segment(name)}`,
  rollout: (namespace, id) => `namespaces/${segment(namespace)}/rollouts/${segment(id)}`,
  // A namespace's subscriptions, or the deployment-wide ones (empty
  // namespace).
  subscriptions: (namespace) => (namespace ? `namespaces/${segment(namespace)}/subscriptions` : 'subscriptions'),
  subscription: (namespace, name) => `${paths.subscriptions(namespace)}/${segment(name)}`,
};

// The OpenID Connect providers people sign in with (asked without a token).
export const identityProviders = () => call('GET', 'identityProviders', { notify: false });

// Every page of a listing, up to `limit` items.
export async function all(path, field, query = {}, limit = 1000) {
  const items = [];
  let pageToken = '';
  do {
    const page = await get(path, { ...query, pageToken });
    items.push(...(page[field] ?? []));
    pageToken = page.nextPageToken ?? '';
  } while (pageToken && items.length < limit);
  return items;
}

// A policy as GetPolicy gives it (its schema, pointers and fleet), or null
// when the namespace has no such policy (NOT_FOUND).
export async function policyRecord(namespace, name) {
  try {
    return await get(paths.policy(namespace, name));
  } catch (refusal) {
    if (refusal instanceof ApiError && refusal.status === 404) return null;
    throw refusal;
  }
}

// Who the token's holder is, asked once per sign-in; a refusal is the
// caller's to show.
let caller = null;
export function whoami() {
  caller ??= call('GET', 'whoami', { notify: false }).catch((refusal) => {
    caller = null;
    throw refusal;
  });
  return caller;
}

// Who the caller is, and the methods it may call in `namespace`.
const allowedCache = new Map();
export async function allowed(namespace) {
  if (!allowedCache.has(namespace)) {
    const reply = await get('whoami', { namespace });
    allowedCache.set(namespace, new Set(reply.allowedMethods ?? []));
  }
  return allowedCache.get(namespace);
}

export function forgetCaller() {
  caller = null;
  allowedCache.clear();
}
