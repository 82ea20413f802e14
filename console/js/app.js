// The console: a router over the location's hash (`#/namespaces/…`, the
// API's own resource paths), sign-in, and the header.

import { ApiError, forgetCaller, onUnauthenticated, token, whoami } from './api.js';
import { h, link, notice, route } from './dom.js';
import { home, namespacePolicies } from './pages/home.js';
import { policy } from './pages/policy.js';
import { compare } from './pages/compare.js';
import { events } from './pages/events.js';
import { fleet } from './pages/fleet.js';
import { rollout, rollouts } from './pages/rollouts.js';
import { schedules } from './pages/schedules.js';

const ROUTES = [
  [/^$/, home],
  [/^namespaces\/([^/]+)$/, namespacePolicies],
  [/^namespaces\/([^/]+)\/policies\/([^/]+)$/, policy],
  [/^namespaces\/([^/]+)\/policies\/([^/]+)\/diff$/, compare],
  [/^namespaces\/([^/]+)\/policies\/([^/]+)\/fleet$/, fleet],
  [/^namespaces\/([^/]+)\/events$/, events],
  [/^namespaces\/([^/]+)\/rollouts$/, rollouts],
  [/^namespaces\/([^/]+)\/rollouts\/([^/]+)$/, rollout],
  [/^namespaces\/([^/]+)\/schedules$/, schedules],
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
  forgetCaller();
  render();
}

function signIn(reason) {
  crumbs([]);
  document.title = 'Sign in · policyhub';
  const input = h('textarea', { id: 'token', name: 'token', autocomplete: 'off', spellcheck: 'false', required: true });
  const error = h('p', { class: 'error', role: 'alert' }, reason ?? '');
  const form = h(
    'form',
    { class: 'signin' },
    h('h1', {}, 'Sign in'),
    h('p', {}, 'Paste a bearer token (for example from ', h('code', {}, 'policyhub token'), ' or your identity provider). It stays in this tab only, and is sent with each API call.'),
    h('label', { for: 'token' }, 'Bearer token'),
    input,
    error,
    h('div', { class: 'actions' }, h('button', { type: 'submit', class: 'primary' }, 'Sign in')),
  );
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    token.set(input.value.trim().replace(/^Bearer\s+/i, ''));
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
  input.focus();
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
  const [path, search] = window.location.hash.replace(/^#\/?/, '').split('?');
  const query = new URLSearchParams(search ?? '');
  const found = ROUTES.map(([pattern, page]) => [path.match(pattern), page]).find(([match]) => match);
  if (!found) {
    crumbs([]);
    main.replaceChildren(h('h1', {}, 'Not found'), h('p', {}, 'No page at this address. ', link(route(), 'Go to the namespaces')));
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
  main.replaceChildren(view);
}

onUnauthenticated(() => {
  token.clear();
  forgetCaller();
  stopPage?.();
  stopPage = null;
  signIn('The server no longer accepts the token: sign in again.');
});

document.querySelector('.skip').addEventListener('click', (event) => {
  event.preventDefault();
  main.focus();
});
window.addEventListener('hashchange', render);
render();
