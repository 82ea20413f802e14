// Namespaces and their policies: what is active (version, label,
// revision), whether a draft is open, and how the fleet took it. All of it
// comes with the listing, a page of up to 500 policies per call, so the
// page costs one call per 500 policies instead of two per policy.

import { all, allowed, paths } from '../api.js';
import { h, link, route, table, tabs } from '../dom.js';
import { follow } from '../live.js';

// The most policies the API returns in one page (its default
// limits.max_page_size; a server set lower answers in more pages).
const LISTING_PAGE = 500;

export async function home(view, _params, _query, { crumbs }) {
  crumbs([]);
  document.title = 'Namespaces · policyhub';
  const listing = h('div', { id: 'namespaces' }, namespaceSections(await all('policies', 'policies', { pageSize: LISTING_PAGE })));
  view.append(h('h1', {}, 'Namespaces'), listing);
  // Every namespace: no one watch covers them, so counted again every few
  // seconds.
  return follow({
    every: 10000,
    onChange: async () => listing.replaceChildren(...namespaceSections(await all('policies', 'policies', { pageSize: LISTING_PAGE }))),
  });
}

function namespaceSections(policies) {
  const namespaces = Map.groupBy(policies, (policy) => policy.namespace);
  if (namespaces.size === 0) {
    return [h('p', {}, 'No policy yet: write a draft with ', h('code', {}, 'policyhub draft'), ' or the API.')];
  }
  return [...namespaces].map(([namespace, members]) => h('section', { 'aria-labelledby': `ns-${namespace}` },
    h('h2', { id: `ns-${namespace}` }, link(route('namespaces', namespace), namespace)),
    policyTable(namespace, members)));
}

export async function namespacePolicies(view, [namespace], _query, { crumbs }) {
  crumbs(namespaceCrumbs(namespace));
  document.title = `${namespace} · policyhub`;
  const listAll = () => all(`${paths.namespace(namespace)}/policies`, 'policies', { pageSize: LISTING_PAGE }, Infinity);
  const [policies, may] = await Promise.all([listAll(), allowed(namespace)]);
  const browser = policyBrowser(namespace, policies);
  view.append(
    h('h1', {}, namespace),
    namespaceTabs(namespace, 'Policies'),
    may.has('Draft') ? newPolicyForm(namespace) : '',
    browser.element,
  );
  // Fleet counts move with the runtimes' reports, pointers with activations.
  return follow({ namespace, every: 5000, onChange: async () => browser.update(await listAll()) });
}

const PAGE = 100;
const SHOW = {
  all: ['Every policy', () => true],
  draft: ['With an open draft', (policy) => policy.draftVersion],
  inactive: ['Nothing active', (policy) => !policy.activeVersion],
  rejected: ['Rejected by a runtime', (policy) => policy.fleet?.rejected],
  pending: ['Runtimes pending', (policy) => policy.fleet?.pending],
};

// The policies of a namespace, searched by name, filtered and shown a page
// at a time: { element, update(policies) }.
function policyBrowser(namespace, initial) {
  let policies = initial;
  let page = 0;
  const search = h('input', { id: 'policy-search', type: 'search', name: 'q', autocomplete: 'off', 'aria-controls': 'policies' });
  const show = h('select', { id: 'policy-show', name: 'show', 'aria-controls': 'policies' },
    Object.entries(SHOW).map(([value, [text]]) => h('option', { value }, text)));
  const count = h('p', { id: 'policy-count', role: 'status' });
  const listing = h('div', { id: 'policies' });
  const previous = h('button', { type: 'button', id: 'policies-previous' }, 'Previous page');
  const next = h('button', { type: 'button', id: 'policies-next' }, 'Next page');
  const draw = () => {
    const words = search.value.trim().toLowerCase();
    const matching = policies.filter((policy) => (!words || policy.name.includes(words)) && SHOW[show.value][1](policy));
    const pages = Math.max(1, Math.ceil(matching.length / PAGE));
    page = Math.min(page, pages - 1);
    const shown = matching.slice(page * PAGE, (page + 1) * PAGE);
    count.textContent = matching.length
      ? `${page * PAGE + 1}–${page * PAGE + shown.length} of ${matching.length} policies${matching.length < policies.length ? ` (of ${policies.length})` : ''}, page ${page + 1} of ${pages}`
      : (policies.length ? `No policy matches, of ${policies.length}.` : 'No policy in this namespace.');
    listing.replaceChildren(shown.length ? policyTable(namespace, shown) : '');
    previous.disabled = page === 0;
    next.disabled = page >= pages - 1;
  };
  search.addEventListener('input', () => {
    page = 0;
    draw();
  });
  show.addEventListener('change', () => {
    page = 0;
    draw();
  });
  previous.addEventListener('click', () => {
    page -= 1;
    draw();
  });
  next.addEventListener('click', () => {
    page += 1;
    draw();
  });
  draw();
  const form = h('form', { role: 'search', 'aria-label': 'Find policies', class: 'row' },
    h('div', {}, h('label', { for: 'policy-search' }, 'Search by name'), search),
    h('div', {}, h('label', { for: 'policy-show' }, 'Show'), show));
  form.addEventListener('submit', (event) => event.preventDefault());
  return {
    element: h('div', {}, form, count, listing, h('nav', { 'aria-label': 'Pages of policies', class: 'actions' }, previous, next)),
    update(fresh) {
      policies = fresh;
      draw();
    },
  };
}

// A new policy: its name, then the draft page, where its first version is
// written.
function newPolicyForm(namespace) {
  const input = h('input', { id: 'new-policy', name: 'name', type: 'text', autocomplete: 'off', required: true, pattern: '[a-z0-9._\\-]+', 'aria-describedby': 'new-policy-help' });
  const form = h('form', { 'aria-label': 'New policy', class: 'row new-policy' },
    h('div', {}, h('label', { for: 'new-policy' }, 'New policy'), input,
      h('p', { class: 'help', id: 'new-policy-help' }, 'Lowercase letters, digits, ".", "-" and "_".')),
    h('button', { type: 'submit' }, 'Write its first draft'));
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    if (!input.value.trim()) return input.focus();
    window.location.hash = route('namespaces', namespace, 'policies', input.value.trim(), 'draft');
  });
  return form;
}

export function namespaceTabs(namespace, current) {
  return tabs('Namespace', current, [
    ['Policies', route('namespaces', namespace)],
    ['Events', route('namespaces', namespace, 'events')],
    ['Rollouts', route('namespaces', namespace, 'rollouts')],
    ['Schedules', route('namespaces', namespace, 'schedules')],
    ['Subscriptions', route('namespaces', namespace, 'subscriptions')],
    ['Decisions', route('namespaces', namespace, 'decisions')],
  ]);
}

// The breadcrumbs of a namespace's page, then `last` and what follows it.
export function namespaceCrumbs(namespace, ...last) {
  return [['Namespaces', route()], [namespace, route('namespaces', namespace)], ...last.map((entry) => [entry].flat())];
}

function policyTable(namespace, policies) {
  const rows = policies.map((policy) => {
    const active = policy.activeVersion ?? 0;
    return h(
      'tr',
      {},
      h('th', { scope: 'row' }, link(route('namespaces', namespace, 'policies', policy.name), policy.name)),
      h('td', {}, active ? `v${active}` : h('span', { class: 'muted' }, 'none')),
      h('td', {}, policy.activeLabel || h('span', { class: 'muted' }, '—')),
      h('td', {}, policy.activeRevision ?? '—'),
      h('td', {}, policy.draftVersion ? link(route('namespaces', namespace, 'policies', policy.name) + `?version=${policy.draftVersion}`, `v${policy.draftVersion}`) : h('span', { class: 'muted' }, 'none')),
      h('td', {}, link(route('namespaces', namespace, 'policies', policy.name, 'fleet'), fleetSummary(policy.fleet ?? {}))),
    );
  });
  return table(['Policy', 'Active', 'Label', 'Revision', 'Draft', 'Fleet'], rows, `Policies of ${namespace}`);
}

export function fleetSummary(status) {
  const count = (field) => status[field] ?? 0;
  if (!count('runtimes')) return 'no runtime';
  return `${count('applied')} applied · ${count('rejected')} rejected · ${count('pending')} pending of ${count('runtimes')}`;
}
