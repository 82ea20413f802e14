// Rollouts: the list of a namespace, and one rollout with its targets, its
// steps, the current cohort's progress (polled while it moves) and the
// controls its state allows the caller.

import { allowed, get, paths, post } from '../api.js';
import { confirmAction } from '../confirm.js';
import { announce, facts, h, link, notice, route, stateName, table, time } from '../dom.js';
import { namespaceCrumbs, namespaceTabs } from './home.js';

const POLL_MS = 1000;
const FINAL = ['ROLLOUT_STATE_COMPLETED', 'ROLLOUT_STATE_ABORTED', 'ROLLOUT_STATE_ROLLED_BACK'];

const state = (rollout) => stateName(rollout.state, 'ROLLOUT_STATE_');

function targets(rollout) {
  return (rollout.targets ?? []).map((target) => `${target.name} v${target.stableVersion ?? 0} → v${target.version}${target.label ? ` (${target.label})` : ''}`).join(', ');
}

export async function rollouts(view, [namespace], _query, { crumbs }) {
  crumbs(namespaceCrumbs(namespace, 'Rollouts'));
  document.title = `Rollouts of ${namespace} · policyhub`;
  const reply = await get(`${paths.namespace(namespace)}/rollouts`);
  const list = reply.rollouts ?? [];
  view.append(
    h('h1', {}, `Rollouts of ${namespace}`),
    namespaceTabs(namespace, 'Rollouts'),
    list.length
      ? table(['Rollout', 'State', 'Targets', 'Started', 'By'], list.map((rollout) => h(
        'tr',
        {},
        h('th', { scope: 'row' }, link(route('namespaces', namespace, 'rollouts', rollout.id), h('code', {}, rollout.id.slice(0, 8)))),
        h('td', {}, state(rollout)),
        h('td', {}, targets(rollout)),
        h('td', {}, time(rollout.createdAt)),
        h('td', {}, rollout.createdBy ?? '—'),
      )), `Rollouts of ${namespace}`)
      : h('p', {}, 'No rollout in this namespace. Start one with ', h('code', {}, 'policyhub rollout start'), '.'),
  );
}

export async function rollout(view, [namespace, id], _query, { crumbs }) {
  crumbs(namespaceCrumbs(namespace, ['Rollouts', route('namespaces', namespace, 'rollouts')], id.slice(0, 8)));
  document.title = `Rollout ${id.slice(0, 8)} · policyhub`;
  const path = paths.rollout(namespace, id);
  const may = await allowed(namespace);
  const body = h('div', { id: 'rollout' });
  view.append(h('h1', {}, `Rollout ${id}`), body);
  let timer = null;
  let stopped = false;
  const refresh = async () => {
    const current = await get(path);
    if (stopped) return;
    const focused = document.activeElement?.id;
    body.replaceChildren(...details(current), controls(namespace, current, may, refresh));
    if (focused) document.getElementById(focused)?.focus();
    if (!FINAL.includes(current.state)) timer = setTimeout(poll, POLL_MS);
  };
  // A failed poll is shown above the last state, and polling goes on.
  const poll = () => refresh().catch((error) => {
    if (stopped) return;
    body.querySelector('.notice')?.remove();
    body.prepend(notice(error));
    timer = setTimeout(poll, POLL_MS);
  });
  await refresh();
  return () => {
    stopped = true;
    clearTimeout(timer);
  };
}

function details(rollout) {
  const progress = rollout.progress ?? {};
  const count = (field) => progress[field] ?? 0;
  const cohort = count('cohort');
  const share = (field) => (cohort ? `${(100 * count(field)) / cohort}%` : '0');
  const steps = rollout.steps ?? [];
  const step = rollout.step ?? 0;
  return [
    facts([
      ['State', h('strong', { id: 'rollout-state' }, state(rollout))],
      ['Targets', targets(rollout)],
      ['Started', h('span', {}, time(rollout.createdAt), ' by ', rollout.createdBy ?? '—')],
      ['Reason', rollout.reason || '—'],
      rollout.startAt ? ['Starts at', time(rollout.startAt)] : null,
      ['Approvals', `${(rollout.approvals ?? []).length} of ${rollout.requiredApprovals ?? 0}${(rollout.approvals ?? []).length ? `: ${rollout.approvals.map((approval) => approval.by).join(', ')}` : ''}`],
      rollout.haltedBecause ? ['Halted because', h('span', { class: 'error' }, rollout.haltedBecause)] : null,
    ]),
    h('h2', {}, 'Steps'),
    h('ol', { class: 'steps' }, steps.map((entry, index) => h(
      'li',
      { class: index === step ? 'current' : '', 'aria-current': index === step ? 'step' : null },
      `${entry.percentage ?? 0}% of runtimes${entry.labelSelector ? ` matching ${entry.labelSelector}` : ''}, bake ${entry.bake ?? '0s'}`,
      index < step ? ' (done)' : '',
    ))),
    h('h2', {}, 'Current cohort'),
    h('p', { id: 'rollout-progress' }, `${count('applied')} applied · ${count('rejected')} rejected · ${count('pending')} pending of ${cohort}`),
    h('div', { class: 'progress', role: 'img', 'aria-label': `${count('applied')} of ${cohort} applied` },
      bar('applied', share('applied')),
      bar('rejected', share('rejected'))),
  ];
}

// A part of the progress bar; its width is set through the CSSOM, which the
// CSP allows (a style attribute it would refuse).
function bar(kind, width) {
  const part = h('span', { class: kind });
  part.style.width = width;
  return part;
}

// Approve, Pause, Resume, Promote, Abort: those the state allows and the
// caller may call.
function controls(namespace, rollout, may, refresh) {
  const path = paths.rollout(namespace, rollout.id);
  const states = {
    ApproveRollout: ['ROLLOUT_STATE_PENDING_APPROVAL'],
    PauseRollout: ['ROLLOUT_STATE_RUNNING'],
    ResumeRollout: ['ROLLOUT_STATE_PAUSED'],
    PromoteRollout: ['ROLLOUT_STATE_RUNNING', 'ROLLOUT_STATE_PAUSED'],
    AbortRollout: ['ROLLOUT_STATE_PENDING_APPROVAL', 'ROLLOUT_STATE_SCHEDULED', 'ROLLOUT_STATE_RUNNING', 'ROLLOUT_STATE_PAUSED'],
  };
  const what = {
    ApproveRollout: ['Approve', 'approve', `Approve this rollout of ${targets(rollout)}: the versions were pinned by digest when it started, so the approval covers exactly them.`],
    PauseRollout: ['Pause', 'pause', 'Pause the rollout: the cohort keeps what it has; no further step starts until it is resumed.'],
    ResumeRollout: ['Resume', 'resume', 'Resume the rollout from its current step.'],
    PromoteRollout: ['Promote', 'promote', `Skip the remaining bake time and steps: ${targets(rollout)} become the active versions for every runtime now.`],
    AbortRollout: ['Abort', 'abort', 'Abort the rollout: the cohort is sent the stable versions back; nothing else changes.'],
  };
  const buttons = Object.entries(states)
    .filter(([method, allowedStates]) => may.has(method) && allowedStates.includes(rollout.state))
    .map(([method]) => {
      const [text, verb, summary] = what[method];
      return h('button', {
        type: 'button',
        id: `rollout-${verb}`,
        class: method === 'AbortRollout' ? 'danger' : '',
        onclick: () => confirmAction({
          title: `${text} rollout ${rollout.id.slice(0, 8)}`,
          summary: [summary],
          fields: [{ name: 'reason', label: 'Reason' }],
          confirmLabel: text,
          danger: method === 'AbortRollout',
          run: async ({ reason }) => {
            await post(`${path}:${verb}`, { reason });
            announce(`${text}: done`);
            await refresh();
          },
        }),
      }, `${text}…`);
    });
  return buttons.length ? h('div', { class: 'actions', id: 'rollout-actions' }, buttons) : h('p', { class: 'muted' }, FINAL.includes(rollout.state) ? 'The rollout has ended.' : 'No control for you in this state.');
}
