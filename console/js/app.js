// The console: a router over the location's hash (`#/namespaces/…`, the
// API's own resource paths), sign-in, and the header.

import { ApiError, beforeEachCall, forgetCaller, identityProviders, onUnauthenticated, token, whoami } from './api.js';
import * as oidc from './oidc.js';
import { h, link, notice, route } from './dom.js';
import { home, namespacePolicies } from './pages/home.js';
import { policy } from './pages/policy.js';
import { draft } from './pages/draft.js';
import { schema } from './pages/schema.js';
import { compare } from './pages/compare.js';
import { events } from './pages/events.js';
import { decisions } from './pages/decisions.js';
import { fleet } from './pages/fleet.js';
import { rollout, rollouts } from './pages/rollouts.js';
import { schedules } from './pages/schedules.js';
import { subscription, subscriptions } from './pages/subscriptions.js';

const ROUTES = [
  [/^$/, home],
  [/^namespaces\/([^/]+)$/, namespacePolicies],
  [/^namespaces\/([^/]+)\/policies\/([^/]+)$/, policy],
  [/^namespaces\/([^/]+)\/policies\/([^/]+)\/diff$/, compare],
  [/^namespaces\/([^/]+)\/policies\/([^/]+)\/draft$/, draft],
  [/^namespaces\/([^/]+)\/policies\/([^/]+)\/schema$/, schema],
  [/^namespaces\/([^/]+)\/policies\/([^/]+)\/fleet$/, fleet],
  [/^namespaces\/([^/]+)\/events$/, events],
  [/^namespaces\/([^/]+)\/decisions$/, decisions],
  [/^namespaces\/([^/]+)\/rollouts$/, rollouts],
  [/^namespaces\/([^/]+)\/rollouts\/([^/]+)$/, rollout],
  [/^namespaces\/([^/]+)\/schedules$/, schedules],
  [/^namespaces\/([^/]+)\/subscriptions$/, subscriptions],
  [/^namespaces\/([^/]+)\/subscriptions\/([^/]+)$/, subscription],
  [/^subscriptions$/, (view, _params, query, context) => subscriptions(view, [''], query, context)],
  [/^subscriptions\/([^/]+)$/, (view, [name], query, context) => subscription(view, ['', name], query, context)],
];

const main = document.getElementById('main');
let stopPage = null;
let rendering = 0;

function crumbs(entries) {
  const nav = document.getElementById('crumbs');
  nav.replaceChildren(
    entries.length ? h('ol', {}, entries.map(([text, href], index) =>
      h('li', {}, index === entries.length - 1 ? h('span', { 'aria-current': 'page' }, text) : link(href, text)))) : '',
  );
}

async function showCaller() {
  const who = document.getElementById('who');
  if (!token.get()) {
    who.replaceChildren();
    return;
  }
  try {
    const me = await whoami();
    const signOut = h('button', { type: 'button', onclick: signOutNow }, 'Sign out');
    who.replaceChildren(h('span', { title: (me.grants ?? []).join(', ') }, 'Signed in as ', h('strong', {}, me.subject)), signOut);
  } catch {
    who.replaceChildren();
  }
}

function signOutNow() {
  token.clear();
  oidc.signOut();
  forgetCaller();
  banner();
  render();
}

// A button that sends the person to `provider` and back to `route`; a
// failure to reach the provider is told in `error`.
function providerButton(provider, route, error, text = `Sign in with ${oidc.issuerHost(provider.issuer)}`) {
  return h('button', {
    type: 'button',
    class: 'primary',
    'data-issuer': provider.issuer,
    onclick: () => oidc.begin(provider, route).catch((failure) => {
      error.textContent = failure instanceof oidc.SignInError ? failure.message
        : `Cannot reach ${oidc.issuerHost(provider.issuer)}: ${failure.message}`;
    }),
  }, text);
}

// The notice that the sign-in has ended, above the page, which stays as it
// is: signing in again returns to the same route. Without `reason`, none.
function banner(reason) {
  const place = document.getElementById('banner');
  if (!reason) {
    place.replaceChildren();
    return;
  }
  const error = h('span', { class: 'error' });
  const provider = oidc.provider();
  const again = provider
    ? providerButton(provider, window.location.hash, error, 'Sign in again')
    : h('button', { type: 'button', class: 'primary', onclick: () => { banner(); render(); } }, 'Sign in again');
  place.replaceChildren(h('div', { class: 'banner', role: 'alert' }, h('p', {}, reason, ' ', again, ' ', error)));
}

async function signIn(reason) {
  crumbs([]);
  document.title = 'Sign in · policyhub';
  const ticket = rendering;
  const providers = await identityProviders().then((reply) => reply.identityProviders ?? [], () => []);
  if (ticket !== rendering) return;
  const input = h('textarea', { id: 'token', name: 'token', autocomplete: 'off', spellcheck: 'false', required: true });
  const error = h('p', { class: 'error', role: 'alert' }, reason ?? '');
  const route = window.location.hash;
  const form = h(
    'form',
    { class: 'signin' },
    h('h1', {}, 'Sign in'),
    providers.length ? [
      h('div', { class: 'actions providers' }, providers.map((provider) => providerButton(provider, route, error))),
      h('h2', {}, 'Or paste a bearer token'),
    ] : null,
    h('p', {}, 'Paste a bearer token (for example from ', h('code', {}, 'policyhub token'), ' or your identity provider). It stays in this tab only, and is sent with each API call.'),
    h('label', { for: 'token' }, 'Bearer token'),
    input,
    error,
    h('div', { class: 'actions' }, h('button', { type: 'submit', class: providers.length ? null : 'primary' }, 'Sign in')),
  );
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    token.set(input.value.trim().replace(/^Bearer\s+/i, ''));
    oidc.signOut();
    forgetCaller();
    try {
      await whoami();
      render();
    } catch (refusal) {
      token.clear();
      error.textContent = refusal instanceof ApiError && refusal.status === 401
        ? `The server refused this token: ${refusal.message}`
        : refusal.message;
    }
  });
  main.replaceChildren(form);
  shown(route);
  if (!providers.length) input.focus();
}

// Busy while a page is drawn; then `data-route` names what main shows.
function shown(hash) {
  main.removeAttribute('aria-busy');
  main.dataset.route = hash;
}

async function render() {
  stopPage?.();
  stopPage = null;
  const ticket = ++rendering;
  showCaller();
  if (!token.get()) {
    signIn();
    return;
  }
  const hash = window.location.hash;
  main.setAttribute('aria-busy', 'true');
  const drawn = () => shown(hash);
  const [path, search] = hash.replace(/^#\/?/, '').split('?');
  const query = new URLSearchParams(search ?? '');
  const found = ROUTES.map(([pattern, page]) => [path.match(pattern), page]).find(([match]) => match);
  if (!found) {
    crumbs([]);
    main.replaceChildren(h('h1', {}, 'Not found'), h('p', {}, 'No page at this address. ', link(route(), 'Go to the namespaces')));
    drawn();
    return;
  }
  const [match, page] = found;
  const params = match.slice(1).map(decodeURIComponent);
  const view = h('div');
  try {
    const stop = await page(view, params, query, { crumbs, rerender: render });
    if (ticket !== rendering) {
      stop?.();
      return;
    }
    stopPage = stop ?? null;
  } catch (error) {
    if (ticket !== rendering) return;
    view.replaceChildren(notice(error));
  }
  if (ticket !== rendering) return;
  // A redraw in place (the page followed a change) keeps the focus where it
  // was, when the same control is still there.
  const focused = main.contains(document.activeElement) ? document.activeElement.id : '';
  main.replaceChildren(view);
  drawn();
  if (focused) document.getElementById(focused)?.focus();
}

// The token refused or expired: the page stays, the banner asks to sign in
// again.
function ended(reason) {
  token.clear();
  forgetCaller();
  stopPage?.();
  stopPage = null;
  showCaller();
  banner(reason);
}
onUnauthenticated(() => ended('The server no longer accepts your sign-in: sign in again to go on; this page stays as it is.'));
oidc.onExpired(() => ended('Your sign-in has expired and could not be renewed: sign in again to go on; this page stays as it is.'));
beforeEachCall(oidc.fresh);

document.querySelector('.skip').addEventListener('click', (event) => {
  event.preventDefault();
  main.focus();
});
window.addEventListener('hashchange', () => {
  banner();
  render();
});
// The provider's answer, when this load is the return from a sign-in.
oidc.complete().then(
  () => {
    oidc.schedule();
    render();
  },
  (failure) => {
    if (token.get()) {
      render();
      banner(failure.message);
    } else {
      rendering += 1;
      showCaller();
      signIn(failure.message);
    }
  },
);
