// Did it land? The fleet's outcome for a policy: applied, rejected (grouped
// by error) and pending, per version, and each runtime with its labels.

import { all, get, paths } from '../api.js';
import { facts, h, stateName, table, time } from '../dom.js';
import { follow } from '../live.js';
import { fleetSummary } from './home.js';
import { policyCrumbs, policyTabs } from './policy.js';

export async function fleet(view, [namespace, name], _query, { crumbs }) {
  crumbs(policyCrumbs(namespace, name, 'Fleet'));
  document.title = `Fleet of ${namespace}/${name} · policyhub`;
  const content = h('div', { id: 'fleet' });
  const refresh = async () => content.replaceChildren(...await fleetContent(namespace, name));
  await refresh();
  view.append(h('h1', {}, `Fleet of ${namespace} / ${name}`), policyTabs(namespace, name, 'Fleet'), content);
  // Runtimes report to the server, not to the watch: counted again every
  // few seconds, and at once when the active version moves.
  return follow({ namespace, names: [name], every: 3000, onChange: refresh });
}

async function fleetContent(namespace, name) {
  const [status, runtimes] = await Promise.all([
    get(`${paths.policy(namespace, name)}/status`),
    all(`${paths.namespace(namespace)}/runtimes`, 'runtimes', { name }),
  ]);
  const active = status.activeVersion ?? 0;
  return [
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
    h('h2', {}, 'Runtimes'),
    runtimes.length
      ? table(['Runtime', 'Labels', 'Connection', 'Outcome', 'Last seen'], runtimes.map((runtime) => runtimeRow(runtime, name, active)), 'Runtimes')
      : h('p', {}, 'No runtime watches this policy.'),
  ];
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
    h('th', { scope: 'row' }, runtime.id),
    h('td', {}, labels || '—'),
    h('td', {}, stateName(runtime.state, 'RUNTIME_STATE_')),
    h('td', {}, outcome),
    h('td', {}, time(runtime.lastSeen)),
  );
}
