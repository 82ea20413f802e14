// The decisions OPAs of a namespace uploaded, newest first, filtered by the
// server by path, result, OPA, revision and time: what the policy decides
// in production.

import { get, paths } from '../api.js';
import { cells, h, route, table, time } from '../dom.js';
import { namespaceCrumbs, namespaceTabs } from './home.js';

const HEADINGS = ['Decided', 'OPA', 'Path', 'Revision', 'Result', 'Input'];

// A time of the filter form (a datetime-local value, UTC) as RFC 3339, and
// `extra` milliseconds later; a value that is no time goes to the server
// as it is, to be refused there by name.
function instant(text, extra = 0) {
  const at = Date.parse(`${text}Z`);
  return Number.isNaN(at) ? text : new Date(at + extra).toISOString();
}

export async function decisions(view, [namespace], query, { crumbs }) {
  crumbs(namespaceCrumbs(namespace, 'Decisions'));
  document.title = `Decisions of ${namespace} · policyhub`;
  const fields = ['path', 'result', 'runtimeId', 'revision', 'since', 'until'];
  const given = Object.fromEntries(fields.map((field) => [field, query.get(field) ?? '']));
  // The server filters: a page holds only matching decisions. "To" is the
  // whole second it shows.
  const filter = {
    ...given,
    since: given.since && instant(given.since),
    until: given.until && instant(given.until, 999),
  };
  const input = (field, label, attributes = {}) => {
    const element = h('input', { id: `filter-${field}`, name: field, value: given[field], autocomplete: 'off', ...attributes });
    return [element, h('div', {}, h('label', { for: element.id }, label), element)];
  };
  const [pathInput, pathField] = input('path', 'Path', { placeholder: 'payments/authz/allow' });
  const [resultInput, resultField] = input('result', 'Result (JSON or undefined)', { placeholder: 'false' });
  const [runtimeInput, runtimeField] = input('runtimeId', 'OPA');
  const [revisionInput, revisionField] = input('revision', 'Revision', { inputmode: 'numeric' });
  const [sinceInput, sinceField] = input('since', 'From (UTC)', { type: 'datetime-local', step: 1 });
  const [untilInput, untilField] = input('until', 'To (UTC)', { type: 'datetime-local', step: 1 });
  const inputs = { path: pathInput, result: resultInput, runtimeId: runtimeInput, revision: revisionInput, since: sinceInput, until: untilInput };
  const filters = h('form', { 'aria-label': 'Filter decisions', class: 'event-filters' },
    h('div', { class: 'row' }, pathField, resultField, runtimeField, revisionField, sinceField, untilField),
    h('button', { type: 'submit' }, 'Filter'));
  filters.addEventListener('submit', (event) => {
    event.preventDefault();
    const search = new URLSearchParams();
    for (const [field, element] of Object.entries(inputs)) {
      if (element.value.trim()) search.set(field, element.value.trim());
    }
    window.location.hash = `${route('namespaces', namespace, 'decisions')}?${search}`;
  });

  const rows = h('tbody');
  const more = h('button', { type: 'button', id: 'decisions-more' }, 'Older decisions');
  let pageToken = '';
  const load = async () => {
    const page = await get(`${paths.namespace(namespace)}/decisions`, { ...filter, pageToken });
    rows.append(...(page.decisions ?? []).map(decisionRow));
    pageToken = page.nextPageToken ?? '';
    more.hidden = !pageToken;
  };
  more.addEventListener('click', load);
  await load();
  const list = table(HEADINGS, [], `Decisions of ${namespace}`, { stack: true });
  list.querySelector('tbody').replaceWith(rows);
  const empty = h('p', { id: 'decisions-none' }, Object.values(given).some(Boolean)
    ? 'No decision matches.'
    : 'No decision yet: OPAs send theirs with their decision_logs plugin.');
  empty.hidden = rows.children.length > 0;
  view.append(h('h1', {}, `Decisions of ${namespace}`), namespaceTabs(namespace, 'Decisions'), filters,
    h('h2', { class: 'visually-hidden' }, 'Decisions'), list, empty, h('div', { class: 'actions' }, more));
}

// A JSON value as compact text; an undefined result as such.
function json(value, otherwise) {
  return value === undefined ? h('span', { class: 'muted' }, otherwise) : h('code', {}, JSON.stringify(value));
}

function decisionRow(decision) {
  return h('tr', { 'data-decision': decision.decisionId }, cells(HEADINGS, [
    time(decision.decideTime),
    decision.runtimeId,
    decision.path,
    decision.revision ?? '—',
    json(decision.result, 'undefined'),
    json(decision.input, 'none'),
  ]));
}

// An impact report (AnalyzeImpact's reply, or the one a rollout was
// admitted on): the totals, each path's tally, then the changes and the
// decisions the engine could not evaluate, with example decision ids;
// each table under a heading of `level` (`h3`).
export function impactReport(report, id, level) {
  const count = (value) => Number(value ?? 0);
  const changes = report.changes ?? [];
  const unknowns = report.unknowns ?? [];
  const examples = (group) => (group.examples ?? []).map((example) => example.decisionId).join(', ');
  return h('div', { id },
    h('p', { class: 'impact-summary' }, count(report.replayed)
      ? `${count(report.replayed)} recorded decisions replayed against the active bundle of revision ${count(report.activeRevision)}: ${count(report.changed)} changed, ${count(report.unknown)} unknown.`
      : 'No recorded decision to replay: the namespace\'s OPAs uploaded none yet.'),
    (report.paths ?? []).length ? h(level, {}, 'By path') : null,
    (report.paths ?? []).length ? table(['Path', 'Replayed', 'Changed', 'Unknown'], report.paths.map((path) => h('tr', {},
      cells(['Path', 'Replayed', 'Changed', 'Unknown'], [path.path, count(path.replayed), count(path.changed), count(path.unknown)]))), 'Decisions by path') : null,
    changes.length ? h(level, {}, 'Changed decisions') : null,
    changes.length ? table(IMPACT_CHANGES, changes.map((change) => h('tr', {}, cells(IMPACT_CHANGES, [
      change.path, h('code', {}, change.before), h('code', {}, change.after), count(change.count), examples(change),
    ]))), 'Changed decisions', { stack: true }) : null,
    unknowns.length ? h(level, {}, 'Not evaluated') : null,
    unknowns.length ? table(IMPACT_UNKNOWNS, unknowns.map((unknown) => h('tr', {}, cells(IMPACT_UNKNOWNS, [
      unknown.path, unknown.reason, count(unknown.count), examples(unknown),
    ]))), 'Decisions the engine could not evaluate', { stack: true }) : null);
}

const IMPACT_CHANGES = ['Path', 'Before', 'After', 'Decisions', 'Examples'];
const IMPACT_UNKNOWNS = ['Path', 'Unknown because', 'Decisions', 'Examples'];
