// A version's body as it is read best. A Rego policy's body (a namespace
// served to OPA) is an OPA bundle in JSON form, `{ modules, data }`: each
// module is shown as its source, under its file name with numbered lines,
// and the data as JSON. Any other body is shown as JSON.

import { h, prettyJson } from './dom.js';

// The modules (file name → Rego source) and the data of a Rego body, the
// modules sorted by file name; null when `body` is not one: a `modules`
// object of strings, beside which only `data` may be.
export function regoBody(body) {
  if (!body || typeof body !== 'object' || Array.isArray(body)) return null;
  const { modules, ...rest } = body;
  if (!modules || typeof modules !== 'object' || Array.isArray(modules)) return null;
  if (Object.keys(rest).some((key) => key !== 'data')) return null;
  if (!Object.values(modules).every((source) => typeof source === 'string')) return null;
  return {
    modules: Object.keys(modules).sort().map((file) => ({ file, source: modules[file] })),
    data: body.data ?? {},
  };
}

// A source's lines, as an editor numbers them: the newline ending the last
// line opens no line of its own.
export function sourceLines(source) {
  return (source.endsWith('\n') ? source.slice(0, -1) : source).split('\n');
}

// A body under headings of `level` (its parts' headings), as `id`; `label`
// names it (e.g. "version 3") to a screen reader.
export function bodyView(body, { id, label, level = 'h4' }) {
  const rego = regoBody(body);
  if (!rego) return h('pre', { id, tabindex: '0', 'aria-label': `Body of ${label}` }, prettyJson(body ?? {}));
  return h(
    'div',
    { id, class: 'rego-body' },
    rego.modules.length ? rego.modules.map(({ file, source }) => h(
      'section',
      { class: 'module', 'data-module': file, 'aria-label': `Rego module ${file} of ${label}` },
      h(level, {}, 'Rego module ', h('code', {}, file)),
      sourceView(file, source),
    )) : h('p', { class: 'muted' }, 'No Rego module.'),
    h('section', { class: 'data', 'aria-label': `Data of ${label}` },
      h(level, {}, 'Data'),
      h('pre', { tabindex: '0', 'aria-label': `Data of ${label}` }, prettyJson(rego.data))),
  );
}

// A source as its lines, each numbered by the stylesheet (from `data-line`,
// so that the numbers are neither selected nor copied with the text), the
// newlines between them kept as text. The numbers' width is set through the
// CSSOM, which the CSP allows (a style attribute it would refuse).
function sourceView(file, source) {
  const lines = sourceLines(source);
  const pre = h('pre', { class: 'source', tabindex: '0', 'aria-label': `${file}, ${lines.length} ${lines.length === 1 ? 'line' : 'lines'}` },
    lines.map((text, index) => [index ? '\n' : null, h('span', { class: 'line', 'data-line': index + 1 }, text)]));
  pre.style.setProperty('--digits', String(String(lines.length).length));
  return pre;
}
