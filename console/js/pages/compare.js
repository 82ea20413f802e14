// Two versions side by side, lines removed and added marked (in words for
// screen readers, in colour for the eye), and the RFC 6902 JSON Patch the
// server computes below.

import { get, paths } from '../api.js';
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
    diffView(prettyJson(left.body ?? {}), prettyJson(right.body ?? {}), [versionTitle(left), versionTitle(right)]),
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

const versionTitle = (version) => `Version ${version.version}${version.label ? ` (${version.label})` : ''}`;

// Two texts side by side under their `titles`, lines removed and added
// marked; the titles are headings of `level`.
export function diffView(before, after, titles, level = 'h2') {
  const rows = sideBySide(before, after);
  const side = (index) => h(
    'section',
    { 'aria-label': titles[index] },
    h(level, {}, titles[index]),
    h('pre', { class: `side-${index}`, tabindex: '0' }, rows.map((row) => {
      const { text, kind } = row[index];
      const mark = { removed: 'removed: ', added: 'added: ' }[kind];
      return h('span', { class: `line ${kind}` }, mark ? h('span', { class: 'visually-hidden' }, mark) : null, text || ' ');
    })),
  );
  return h('div', { class: 'diff' }, side(0), side(1));
}

function requirementsChange(patch) {
  const text = (list) => (list ?? []).map((requirement) => `${requirement.name} ${requirement.range}`).join(', ') || 'none';
  const before = text(patch.fromRequirements);
  const after = text(patch.toRequirements);
  return before === after ? '' : h('p', {}, `Requirements: ${before} → ${after}`);
}
