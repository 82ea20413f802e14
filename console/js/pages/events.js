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

// The server filters by policy and kinds; the actor and the time range are
// applied here, over the pages the server sends (newest first), reading on
// until a page's worth matches.
const WANTED = 50;
const MOST_PAGES = 20;

export async function events(view, [namespace], query, { crumbs }) {
  crumbs(namespaceCrumbs(namespace, 'Events'));
  document.title = `Events of ${namespace} · policyhub`;
  const name = query.get('name') ?? '';
  const chosen = query.getAll('kind');
  const actor = query.get('actor') ?? '';
  const since = query.get('since') ?? '';
  const until = query.get('until') ?? '';
  const filter = { name, kinds: chosen, pageSize: 200 };
  const after = since ? new Date(`${since}Z`) : null;
  const before = until ? new Date(`${until}Z`) : null;
  const matches = (event) => (!actor || (event.actor ?? '').includes(actor))
    && (!after || new Date(event.at) >= after) && (!before || new Date(event.at) <= before);

  const allKinds = await eventKinds();
  const nameInput = h('input', { id: 'filter-name', name: 'name', value: name, autocomplete: 'off' });
  const actorInput = h('input', { id: 'filter-actor', name: 'actor', value: actor, autocomplete: 'off' });
  const sinceInput = h('input', { id: 'filter-since', name: 'since', type: 'datetime-local', step: 1, value: since });
  const untilInput = h('input', { id: 'filter-until', name: 'until', type: 'datetime-local', step: 1, value: until });
  const kindBoxes = allKinds.map((value) => h('input', { type: 'checkbox', name: 'kind', value, id: `kind-${value}`, checked: chosen.includes(value) }));
  const filters = h(
    'form',
    { 'aria-label': 'Filter events', class: 'event-filters' },
    h('div', { class: 'row' },
      h('div', {}, h('label', { for: 'filter-name' }, 'Policy'), nameInput),
      h('div', {}, h('label', { for: 'filter-actor' }, 'Actor'), actorInput),
      h('div', {}, h('label', { for: 'filter-since' }, 'From (UTC)'), sinceInput),
      h('div', {}, h('label', { for: 'filter-until' }, 'To (UTC)'), untilInput)),
    h('fieldset', { class: 'kinds' }, h('legend', {}, 'Kinds (none checked: every kind)'),
      kindBoxes.map((box) => h('span', { class: 'kind' }, box, h('label', { for: box.id }, stateName(box.value, 'EVENT_KIND_'))))),
    h('button', { type: 'submit' }, 'Filter'),
  );
  filters.addEventListener('submit', (event) => {
    event.preventDefault();
    const search = new URLSearchParams();
    if (nameInput.value.trim()) search.set('name', nameInput.value.trim());
    kindBoxes.filter((box) => box.checked).forEach((box) => search.append('kind', box.value));
    if (actorInput.value.trim()) search.set('actor', actorInput.value.trim());
    if (sinceInput.value) search.set('since', sinceInput.value);
    if (untilInput.value) search.set('until', untilInput.value);
    window.location.hash = `${route('namespaces', namespace, 'events')}?${search}`;
  });

  const rows = h('tbody');
  const more = h('button', { type: 'button' }, 'Older events');
  const scanned = h('p', { class: 'muted', id: 'events-scanned', role: 'status' });
  let pageToken = '';
  let newest = 0;
  // Pages until WANTED events match, the server has no more, or the time
  // range is behind.
  const load = async () => {
    let found = 0;
    let read = 0;
    for (let pages = 0; pages < MOST_PAGES; pages += 1) {
      const page = await get(`${paths.namespace(namespace)}/events`, { ...filter, pageToken });
      const list = page.events ?? [];
      if (!newest && list.length) newest = Number(list[0].id);
      read += list.length;
      const kept = list.filter(matches);
      rows.append(...kept.map(eventRow(namespace)));
      found += kept.length;
      pageToken = page.nextPageToken ?? '';
      const behind = after && list.length && new Date(list.at(-1).at) < after;
      if (behind) pageToken = '';
      if (!pageToken || found >= WANTED) break;
    }
    more.hidden = !pageToken;
    scanned.textContent = actor || after || before ? `${found} matching of ${read} events read${pageToken ? '; older ones not read yet' : ''}.` : '';
  };
  more.addEventListener('click', load);
  await load();
  // New events go on top as they are written.
  const newer = async () => {
    const page = await get(`${paths.namespace(namespace)}/events`, filter);
    const fresh = (page.events ?? []).filter((event) => Number(event.id) > newest);
    if (!fresh.length) return;
    newest = Number(fresh[0].id);
    rows.prepend(...fresh.filter(matches).map(eventRow(namespace)));
  };
  const log = table(HEADINGS, [], `Events of ${namespace}`, { stack: true });
  log.querySelector('tbody').replaceWith(rows);
  view.append(h('h1', {}, `Events of ${namespace}`), namespaceTabs(namespace, 'Events'), filters, h('h2', { class: 'visually-hidden' }, 'Events'), log, scanned, h('div', { class: 'actions' }, more));
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
