// The event log of a namespace, newest first, filtered by the server by
// policy, kinds, actor and time: who changed what, when and why.

import { get, paths } from '../api.js';
import { cells, h, link, route, stateName, table, time } from '../dom.js';
import { follow } from '../live.js';
import { namespaceCrumbs, namespaceTabs } from './home.js';

const HEADINGS = ['Time', 'Kind', 'Policy', 'Versions', 'Revision', 'Actor', 'Reason'];

let kinds = null;

// The event kinds, as the API's OpenAPI document names them.
export async function eventKinds() {
  kinds ??= fetch('/openapi.json', { credentials: 'omit' })
    .then((response) => response.json())
    .then((document) => document.components.schemas['policyhub.v1.Event'].properties.kind.enum
      .filter((kind) => !kind.endsWith('_UNSPECIFIED')));
  return kinds;
}

// A time of the filter form (a datetime-local value, UTC) as RFC 3339, and
// `extra` milliseconds later; a value that is no time goes to the server
// as it is, to be refused there by name.
function instant(text, extra = 0) {
  const at = Date.parse(`${text}Z`);
  return Number.isNaN(at) ? text : new Date(at + extra).toISOString();
}

export async function events(view, [namespace], query, { crumbs }) {
  crumbs(namespaceCrumbs(namespace, 'Events'));
  document.title = `Events of ${namespace} · policyhub`;
  const name = query.get('name') ?? '';
  const chosen = query.getAll('kind');
  const actor = query.get('actor') ?? '';
  const since = query.get('since') ?? '';
  const until = query.get('until') ?? '';
  // The server filters, in its query: a page holds only matching events.
  // "To" is the whole second it shows.
  const filter = {
    name,
    kinds: chosen,
    actor,
    since: since && instant(since),
    until: until && instant(until, 999),
  };

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
      h('div', {}, h('label', { for: 'filter-actor' }, 'Actor (exact)'), actorInput),
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
  let pageToken = '';
  let newest = 0;
  const load = async () => {
    const page = await get(`${paths.namespace(namespace)}/events`, { ...filter, pageToken });
    const list = page.events ?? [];
    if (!newest && list.length) newest = Number(list[0].id);
    rows.append(...list.map(eventRow(namespace)));
    pageToken = page.nextPageToken ?? '';
    more.hidden = !pageToken;
  };
  more.addEventListener('click', load);
  await load();
  // New events go on top as they are written.
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
