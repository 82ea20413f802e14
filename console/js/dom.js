// Building the page. Every string goes in as text (a Text node or an
// attribute), never as markup; the CSP's Trusted Types refuse markup anyway.

export function h(tag, props = {}, ...children) {
  const element = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith('on')) element.addEventListener(key.slice(2), value);
    else if (key === 'class') element.className = value;
    else element.setAttribute(key, value === true ? '' : String(value));
  }
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    element.append(child instanceof Node ? child : String(child));
  }
  return element;
}

// A route of the console: `#/` followed by the segments, each encoded.
export function route(...segments) {
  return `#/${segments.map((segment) => encodeURIComponent(segment)).join('/')}`;
}

export function link(href, ...children) {
  return h('a', { href }, ...children);
}

// A time from the API (RFC 3339), shown in UTC, with the local time on hover.
export function time(value) {
  if (!value) return h('span', { class: 'muted' }, '—');
  const date = new Date(value);
  const utc = `${date.toISOString().slice(0, 19).replace('T', ' ')}Z`;
  return h('time', { datetime: value, title: date.toString() }, utc);
}

// A version's state, in words beside its colour.
export function versionState(version) {
  const state = version.active ? 'active' : stateName(version.state, 'VERSION_STATE_');
  return h('span', { class: `state ${state}` }, state);
}

// `ROLLOUT_STATE_PENDING_APPROVAL` → `pending approval`.
export function stateName(value, prefix) {
  return String(value ?? '').replace(prefix, '').toLowerCase().replaceAll('_', ' ');
}

// A table of `rows` under `headings`. A `stack` table is drawn one block
// per row on a narrow screen: its cells then need their column's name as
// `data-label` (see `cells`).
export function table(headings, rows, caption, { stack = false } = {}) {
  return h(
    'div',
    { class: 'scroll' },
    h(
      'table',
      { class: stack ? 'stack' : null },
      caption ? h('caption', { class: 'visually-hidden' }, caption) : null,
      h('thead', {}, h('tr', {}, headings.map((heading) => h('th', { scope: 'col' }, heading)))),
      h('tbody', {}, rows),
    ),
  );
}

// The cells of a row of a `stack` table, each labelled with its heading.
export function cells(headings, values) {
  return values.map((value, index) => h('td', { 'data-label': headings[index] }, value));
}

export function facts(pairs) {
  return h('dl', { class: 'facts' }, pairs.filter(Boolean).map(([term, detail]) => [h('dt', {}, term), h('dd', {}, detail)]));
}

// Links to the sections of a page, the current one marked.
export function tabs(label, current, entries) {
  return h(
    'nav',
    { 'aria-label': label },
    h(
      'ul',
      { class: 'tabs' },
      entries.map(([name, href]) => h('li', {}, h('a', { href, 'aria-current': name === current ? 'page' : null }, name))),
    ),
  );
}

export function notice(error) {
  return h('p', { class: 'notice', role: 'alert' }, error.message ?? String(error));
}

// Pretty JSON with object keys sorted, so equal documents print alike.
export function prettyJson(value) {
  return JSON.stringify(sortKeys(value), null, 2);
}

function sortKeys(value) {
  if (Array.isArray(value)) return value.map(sortKeys);
  if (value && typeof value === 'object') {
    return Object.fromEntries(Object.keys(value).sort().map((key) => [key, sortKeys(value[key])]));
  }
  return value;
}

export function announce(text) {
  document.getElementById('announce').textContent = text;
}
