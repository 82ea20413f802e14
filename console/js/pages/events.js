// The event log of a namespace, newest first, filtered by policy and kind:
// who changed what, when and why.

import { get, paths } from '../api.js';
import { cells, h, link, route, stateName, table, time } from '../dom.js';
import { follow } from '../live.js';
import { namespaceCrumbs, namespaceTabs } from './home.js';

const HEADINGS = ['Time', 'Kind', 'Policy', 'Versions', 'Revision', 'Actor', 'Reason'];

let kinds = null;

// The event kinds, as the API's OpenAPI document names them.
async function eventKinds() {
  kinds ??= fetch('/openapi.json', { credentials: 'omit' })
    .then((response) => response.json())
    .then((document) => document.components.schemas['policyhub.v1.Event'].properties.kind.enum
      .filter((kind) => !kind.endsWith('_UNSPECIFIED')));
  return kinds;
}

export async function events(view, [namespace], query, { crumbs }) {
  crumbs(namespaceCrumbs(namespace, 'Events'));
  document.title = `Events of ${namespace} · policyhub`;
  const name = query.get('name') ?? '';
  const kind = query.get('kind') ?? '';
  const filter = { name, kinds: kind };
  const [first, allKinds] = await Promise.all([get(`${paths.namespace(namespace)}/events`, filter), eventKinds()]);

  const nameInput = h('input', { id: 'filter-name', name: 'name', value: name, autocomplete: 'off' });
  const kindSelect = h(
    'select',
    { id: 'filter-kind', name: 'kind' },
    h('option', { value: '' }, 'every kind'),
    allKinds.map((value) => h('option', { value, selected: value === kind }, stateName(value, 'EVENT_KIND_'))),
  );
  const filters = h(
    'form',
    { 'aria-label': 'Filter events' },
    h('div', { class: 'row' },
      h('div', {}, h('label', { for: 'filter-name' }, 'Policy'), nameInput),
      h('div', {}, h('label', { for: 'filter-kind' }, 'Kind'), kindSelect),
      h('button', { type: 'submit' }, 'Filter')),
  );
  filters.addEventListener('submit', (event) => {
    event.preventDefault();
    const search = new URLSearchParams();
    if (nameInput.value.trim()) search.set('name', nameInput.value.trim());
    if (kindSelect.value) search.set('kind', kindSelect.value);
    window.location.hash = `${route('namespaces', namespace, 'events')}?${search}`;
  });

  const rows = h('tbody');
  const more = h('button', { type: 'button' }, 'Older events');
  let pageToken = '';
  const show = (page) => {
    rows.append(...(page.events ?? []).map(eventRow(namespace)));
    pageToken = page.nextPageToken ?? '';
    more.hidden = !pageToken;
  };
  more.addEventListener('click', async () => show(await get(`${paths.namespace(namespace)}/events`, { ...filter, pageToken })));
  show(first);
  // New events go on top as they are written.
  let newest = Number(first.events?.[0]?.id ?? 0);
  const newer = async () => {
    const page = await get(`${paths.namespace(namespace)}/events`, filter);
    const fresh = (page.events ?? []).filter((event) => Number(event.id) > newest);
    if (!fresh.length) return;
    newest = Number(fresh[0].id);
    rows.prepend(...fresh.map(eventRow(namespace)));
  };
  const log = table(HEADINGS, [], `Events of ${namespace}`, { stack: true });
  log.querySelector('tbody').replaceWith(rows);
  view.append(h('h1', {}, `Events of ${namespace}`), namespaceTabs(namespace, 'Events'), filters, h('h2', { class: 'visually-hidden' }, 'Events'), log, h('div', { class: 'actions' }, more));
  return follow({ namespace, every: 3000, onChange: newer });
}

function eventRow(namespace) {
  return (event) => h('tr', { 'data-event': event.id }, cells(HEADINGS, [
    time(event.at),
    stateName(event.kind, 'EVENT_KIND_'),
    event.name ? link(route('namespaces', namespace, 'policies', event.name), event.name) : '—',
    versions(event),
    event.revision ?? '—',
    event.actor ?? '—',
    event.reason ?? '',
  ]));
}

function versions(event) {
  const before = event.previousVersion ?? 0;
  const after = event.newVersion ?? 0;
  if (!before && !after) return '—';
  if (!before) return `v${after}`;
  return `v${before} → v${after || '∅'}`;
}
