// Did it land? The fleet's outcome for a policy: applied, rejected (grouped
// by error) and pending, per version, and each runtime with its labels (an
// OPA marked as such).

import { get, paths } from '../api.js';
import { facts, h, route, stateName, table, time } from '../dom.js';
import { runtimeName } from '../engine.js';
import { follow } from '../live.js';
import { fleetSummary } from './home.js';
import { policyCrumbs, policyTabs } from './policy.js';

const PAGE = 100;
const STATES = ['RUNTIME_STATE_CONNECTED', 'RUNTIME_STATE_DISCONNECTED', 'RUNTIME_STATE_STALE'];

export async function fleet(view, [namespace, name], query, { crumbs }) {
  crumbs(policyCrumbs(namespace, name, 'Fleet'));
  document.title = `Fleet of ${namespace}/${name} · policyhub`;
  // The runtimes a page at a time, filtered by the server: the page's
  // token is kept, and those of the pages before it for Previous.
  const filter = { name, labelSelector: query.get('labels') ?? '', states: query.get('state') ?? '', pageSize: PAGE };
  const tokens = [''];
  const content = h('div', { id: 'fleet' });
  const runtimesPlace = h('div', { id: 'runtimes' });
  const previous = h('button', { type: 'button', id: 'runtimes-previous' }, 'Previous page');
  const next = h('button', { type: 'button', id: 'runtimes-next' }, 'Next page');
  const position = h('p', { id: 'runtimes-page', role: 'status' });
  let nextToken = '';
  const refresh = async () => {
    const [parts, page] = await Promise.all([
      fleetContent(namespace, name),
      get(`${paths.namespace(namespace)}/runtimes`, { ...filter, pageToken: tokens.at(-1) }),
    ]);
    const active = parts.active;
    content.replaceChildren(...parts.elements);
    const runtimes = page.runtimes ?? [];
    nextToken = page.nextPageToken ?? '';
    runtimesPlace.replaceChildren(runtimes.length
      ? table(['Runtime', 'Labels', 'Connection', 'Outcome', 'Last seen'], runtimes.map((runtime) => runtimeRow(runtime, name, active)), 'Runtimes')
      : h('p', {}, filter.labelSelector || filter.states ? 'No runtime matches.' : 'No runtime watches this policy.'));
    position.textContent = `Page ${tokens.length}${runtimes.length ? `: runtimes ${(tokens.length - 1) * PAGE + 1}–${(tokens.length - 1) * PAGE + runtimes.length}` : ''}${nextToken ? ', more after' : ''}.`;
    previous.disabled = tokens.length === 1;
    next.disabled = !nextToken;
  };
  previous.addEventListener('click', async () => {
    tokens.pop();
    await refresh();
  });
  next.addEventListener('click', async () => {
    tokens.push(nextToken);
    await refresh();
  });
  await refresh();
  const labels = h('input', { id: 'runtime-labels', name: 'labels', type: 'text', autocomplete: 'off', value: filter.labelSelector, placeholder: 'region=eu,tier!=canary', 'aria-describedby': 'runtime-labels-help' });
  const state = h('select', { id: 'runtime-state', name: 'state' }, h('option', { value: '' }, 'any'),
    STATES.map((value) => h('option', { value, selected: value === filter.states }, stateName(value, 'RUNTIME_STATE_'))));
  const filters = h('form', { 'aria-label': 'Filter runtimes', class: 'row' },
    h('div', {}, h('label', { for: 'runtime-labels' }, 'Labels'), labels, h('p', { class: 'help', id: 'runtime-labels-help' }, 'A Kubernetes label selector.')),
    h('div', {}, h('label', { for: 'runtime-state' }, 'Connection'), state),
    h('button', { type: 'submit' }, 'Filter'));
  filters.addEventListener('submit', (event) => {
    event.preventDefault();
    const search = new URLSearchParams();
    if (labels.value.trim()) search.set('labels', labels.value.trim());
    if (state.value) search.set('state', state.value);
    window.location.hash = `${route('namespaces', namespace, 'policies', name, 'fleet')}?${search}`;
  });
  view.append(h('h1', {}, `Fleet of ${namespace} / ${name}`), policyTabs(namespace, name, 'Fleet'), content,
    h('h2', {}, 'Runtimes'), filters, runtimesPlace, h('nav', { class: 'actions', 'aria-label': 'Pages of runtimes' }, previous, next), position);
  // Runtimes report to the server, not to the watch: counted again every
  // few seconds, and at once when the active version moves.
  return follow({ namespace, names: [name], every: 3000, onChange: refresh });
}

// The counts of the fleet, and the active version they count against.
async function fleetContent(namespace, name) {
  const status = await get(`${paths.policy(namespace, name)}/status`);
  const active = status.activeVersion ?? 0;
  return { active, elements: [
    facts([
      ['Active version', active ? `v${active} (revision ${status.activeRevision ?? 0})` : 'none'],
      ['Runtimes', h('span', { id: 'fleet-summary' }, fleetSummary(status))],
      ['Stale', String(status.stale ?? 0)],
    ]),
    h('h2', {}, 'Per version'),
    (status.versions ?? []).length
      ? table(['Version', 'Applied', 'Rejected', 'Errors'], status.versions.map((version) => h(
        'tr',
        {},
        h('th', { scope: 'row' }, `v${version.version}`),
        h('td', {}, version.applied ?? 0),
        h('td', {}, version.rejected ?? 0),
        h('td', {}, (version.rejections ?? []).length
          ? h('ul', {}, version.rejections.map((group) => h('li', {}, `${group.runtimes} × `, h('code', {}, group.error), ` (${(group.runtimeIds ?? []).join(', ')})`)))
          : '—'),
      )), 'Outcome per version')
      : h('p', {}, 'No runtime has reported on this policy yet.'),
  ] };
}

function runtimeRow(runtime, name, active) {
  const labels = Object.entries(runtime.labels ?? {}).map(([key, value]) => `${key}=${value}`).join(', ');
  const report = (runtime.policies ?? []).find((policy) => policy.name === name);
  let outcome = h('span', { class: 'muted' }, 'pending');
  if (report) {
    const applied = report.state === 'APPLY_STATE_APPLIED';
    outcome = h(
      'span',
      { class: applied ? '' : 'error' },
      `${applied ? 'applied' : 'rejected'} v${report.version ?? 0}`,
      report.version !== active && applied ? ' (not the active version)' : '',
      report.error ? [': ', h('code', {}, report.error)] : '',
    );
  }
  return h(
    'tr',
    { 'data-runtime': runtime.id },
    h('th', { scope: 'row' }, runtimeName(runtime)),
    h('td', {}, labels || '—'),
    h('td', {}, stateName(runtime.state, 'RUNTIME_STATE_')),
    h('td', {}, outcome),
    h('td', {}, time(runtime.lastSeen)),
  );
}
