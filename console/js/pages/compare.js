// Two versions side by side, lines removed and added marked (in words for
// screen readers, in colour for the eye), and the RFC 6902 JSON Patch the
// server computes below. Two Rego bodies are compared a module at a time,
// as text, and their data as JSON.

import { get, paths } from '../api.js';
import { regoBody, sourceLines } from '../body.js';
import { h, prettyJson, route, table } from '../dom.js';
import { sideBySide } from '../linediff.js';
import { policyCrumbs, policyTabs } from './policy.js';

export async function compare(view, [namespace, name], query, { crumbs }) {
  crumbs(policyCrumbs(namespace, name, 'Compare'));
  const from = Number(query.get('from'));
  const to = Number(query.get('to'));
  document.title = `${namespace}/${name} v${from}→v${to} · policyhub`;
  const base = paths.policy(namespace, name);
  const [left, right, patch] = await Promise.all([
    get(`${base}/versions/${from}`),
    get(`${base}/versions/${to}`),
    get(`${base}:diff`, { fromVersion: from, toVersion: to }),
  ]);
  const operations = patch.operations ?? [];
  view.append(
    h('h1', {}, `${namespace} / ${name}: version ${from} → ${to}`),
    policyTabs(namespace, name, null),
    bodyDiff(left.body, right.body, [versionTitle(left), versionTitle(right)]),
    h('h2', {}, 'JSON Patch (RFC 6902)'),
    operations.length
      ? table(['Operation', 'Path', 'Value'], operations.map((operation) => h(
        'tr',
        {},
        h('td', {}, operation.op),
        h('td', {}, h('code', {}, operation.path || '/'), operation.from ? ` from ${operation.from}` : ''),
        h('td', {}, 'value' in operation ? h('code', {}, JSON.stringify(operation.value)) : '—'),
      )), 'JSON Patch operations')
      : h('p', { id: 'no-operations' }, 'The bodies are equal.'),
    requirementsChange(patch),
    h('p', {}, h('a', { href: `${route('namespaces', namespace, 'policies', name)}?version=${to}` }, `Back to version ${to}`)),
  );
}

const count = (n, what) => `${n} ${what}${n === 1 ? '' : 's'}`;
const versionTitle = (version) => `Version ${version.version}${version.label ? ` (${version.label})` : ''}`;

// Two bodies side by side under their `titles` (headings of `level`). When
// both are Rego bodies (or one is, and the other is empty: nothing active),
// each module is compared as text under a heading of its own, a module
// added or removed shown whole, then the data as JSON; else the bodies as
// JSON.
export function bodyDiff(before, after, titles, level = 'h2') {
  const empty = (body) => !body || (typeof body === 'object' && !Array.isArray(body) && !Object.keys(body).length);
  const left = regoBody(before) ?? (empty(before) && regoBody(after) ? regoBody({ modules: {} }) : null);
  const right = regoBody(after) ?? (empty(after) && left ? regoBody({ modules: {} }) : null);
  if (!left || !right) return diffView(prettyJson(before ?? {}), prettyJson(after ?? {}), titles, level);
  const sub = `h${Number(level.slice(1)) + 1}`;
  const sources = (rego) => new Map(rego.modules.map(({ file, source }) => [file, source]));
  const was = sources(left);
  const is = sources(right);
  const files = [...new Set([...was.keys(), ...is.keys()])].sort();
  const modules = files.map((file) => {
    const from = was.get(file) ?? null;
    const to = is.get(file) ?? null;
    const change = from === null ? 'added' : to === null ? 'removed' : from === to ? 'unchanged' : 'changed';
    const lines = (source) => (source === null ? null : sourceLines(source).join('\n'));
    const diff = diffView(lines(from), lines(to), titles.map((title) => `${title}: ${file}`), sub, { numbered: true });
    const ending = change === 'changed' && lines(from) === lines(to) ? h('p', {}, 'Only the newline at the end of the file differs.') : '';
    return h(
      'section',
      { class: `module-diff ${change}`, 'data-module': file, 'data-change': change, 'aria-label': `Rego module ${file}, ${change}` },
      h(level, {}, 'Rego module ', h('code', {}, file), `: ${change}`),
      ending,
      change === 'unchanged' ? h('details', {}, h('summary', {}, `Show its ${count(sourceLines(to).length, 'line')}`), diff) : diff,
    );
  });
  return h(
    'div',
    { class: 'rego-diff' },
    modules.length ? modules : h('p', { class: 'muted' }, 'No Rego module on either side.'),
    h('section', { class: 'data-diff', 'aria-label': 'Data' },
      h(level, {}, 'Data'),
      diffView(prettyJson(left.data), prettyJson(right.data), titles.map((title) => `${title}: data`), sub)),
  );
}

// Two texts side by side under their `titles`, lines removed and added
// marked; the titles are headings of `level`. A text that is null is
// absent (no line); `numbered` numbers each side's lines.
export function diffView(before, after, titles, level = 'h2', { numbered = false } = {}) {
  const rows = sideBySide(before, after);
  const side = (index) => {
    let number = 0;
    const lines = rows.map((row) => {
      const { text, kind } = row[index];
      const mark = { removed: 'removed: ', added: 'added: ' }[kind];
      if (kind !== 'blank') number += 1;
      const numberedLine = numbered && kind !== 'blank';
      // An empty line keeps its height by a space, or by its number.
      return h(
        'span',
        { class: `line ${kind}`, 'data-line': numberedLine ? number : null },
        mark ? h('span', { class: 'visually-hidden' }, mark) : null,
        text || (numberedLine ? '' : ' '),
      );
    });
    const pre = h('pre', { class: `side-${index}${numbered ? ' numbered' : ''}`, tabindex: '0' }, lines);
    // The numbers' width, set through the CSSOM, which the CSP allows (a
    // style attribute it would refuse).
    if (numbered) pre.style.setProperty('--digits', String(String(number).length));
    return h('section', { 'aria-label': titles[index] }, h(level, {}, titles[index]), pre);
  };
  return h('div', { class: 'diff' }, side(0), side(1));
}

function requirementsChange(patch) {
  const text = (list) => (list ?? []).map((requirement) => `${requirement.name} ${requirement.range}`).join(', ') || 'none';
  const before = text(patch.fromRequirements);
  const after = text(patch.toRequirements);
  return before === after ? '' : h('p', {}, `Requirements: ${before} → ${after}`);
}
