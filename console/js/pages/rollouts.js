// Rollouts: the list of a namespace, and one rollout with its targets, each
// analysis's measurements charted against the bound of its condition over
// the steps, its steps with what each analysis measured in each, the
// current cohort's progress (polled while it moves, and once it completed
// until none is pending) and the controls its state allows the caller.

import { all, allowed, get, paths, post } from '../api.js';
import { confirmAction } from '../confirm.js';
import { announce, cells, facts, h, link, notice, route, stateName, table, time } from '../dom.js';
import { legend, measurementChart, phaseOf, tally } from '../chart.js';
import { runtimeName } from '../engine.js';
import { follow } from '../live.js';
import { impactReport } from './decisions.js';
import { namespaceCrumbs, namespaceTabs } from './home.js';

const POLL_MS = 1000;
const FINAL = ['ROLLOUT_STATE_COMPLETED', 'ROLLOUT_STATE_ABORTED', 'ROLLOUT_STATE_ROLLED_BACK'];
// The server returns a rollout's newest thousand measurements.
const MEASUREMENTS_KEPT = 1000;

export const state = (rollout) => stateName(rollout.state, 'ROLLOUT_STATE_');

// Whether the rollout still holds its policies: until it ends, the server
// refuses to activate or roll them back.
export const isLive = (rollout) => !FINAL.includes(rollout.state);

// The rollouts of `namespace` that move `name`, newest first.
export async function rolloutsOf(namespace, name) {
  const list = await all(`${paths.namespace(namespace)}/rollouts`, 'rollouts', { pageSize: 500 });
  return list.filter((rollout) => (rollout.targets ?? []).some((target) => target.name === name));
}

function targets(rollout) {
  return (rollout.targets ?? []).map((target) => `${target.name} v${target.stableVersion ?? 0} → v${target.version}${target.label ? ` (${target.label})` : ''}`).join(', ');
}

export async function rollouts(view, [namespace], _query, { crumbs }) {
  crumbs(namespaceCrumbs(namespace, 'Rollouts'));
  document.title = `Rollouts of ${namespace} · policyhub`;
  const read = () => all(`${paths.namespace(namespace)}/rollouts`, 'rollouts', { pageSize: 500 });
  const listing = h('div', { id: 'rollouts' }, rolloutTable(namespace, await read()));
  view.append(h('h1', {}, `Rollouts of ${namespace}`), namespaceTabs(namespace, 'Rollouts'), listing);
  // A rollout moves by itself (steps, bakes, approvals): read again every
  // few seconds, and at once when the watch brings a change.
  return follow({ namespace, every: 5000, onChange: async () => listing.replaceChildren(rolloutTable(namespace, await read())) });
}

function rolloutTable(namespace, list) {
  return list.length
      ? table(['Rollout', 'State', 'Targets', 'Started', 'By'], list.map((rollout) => h(
        'tr',
        {},
        h('th', { scope: 'row' }, link(route('namespaces', namespace, 'rollouts', rollout.id), h('code', {}, rollout.id.slice(0, 8)))),
        h('td', {}, state(rollout)),
        h('td', {}, targets(rollout)),
        h('td', {}, time(rollout.createdAt)),
        h('td', {}, rollout.createdBy ?? '—'),
      )), `Rollouts of ${namespace}`)
      : h('p', {}, 'No rollout in this namespace. Start one with ', h('code', {}, 'policyhub rollout start'), '.');
}

export async function rollout(view, [namespace, id], _query, { crumbs }) {
  crumbs(namespaceCrumbs(namespace, ['Rollouts', route('namespaces', namespace, 'rollouts')], id.slice(0, 8)));
  document.title = `Rollout ${id.slice(0, 8)} · policyhub`;
  const path = paths.rollout(namespace, id);
  const may = await allowed(namespace);
  const body = h('div', { id: 'rollout' });
  view.append(h('h1', {}, `Rollout ${id}`), body);
  // At most one poll is ever waiting: each read clears the one before it
  // sets its own, so a control's refresh does not start a second chain;
  // leaving the page clears the one waiting.
  let timer = null;
  let stopped = false;
  let last = null;
  let reads = 0;
  // The runtimes are asked again when the cohort's counts move.
  let cohort = [];
  let counted = null;
  // The analyses' charts and tables are drawn again only when what they
  // show changed; a table the reader opened stays open.
  const opened = new Set();
  let measured = null;
  let analyses = null;
  const draw = async () => {
    const read = ++reads;
    const current = await get(path);
    const counts = JSON.stringify([current.progress ?? {}, current.state, current.step]);
    if (counts !== counted) {
      cohort = await cohortOf(namespace, current);
      counted = counts;
    }
    // Left, or a newer read (a control's) is on its way.
    if (stopped || read !== reads) return;
    const shown = JSON.stringify([analysesOf(current), current.steps?.map((entry) => entry.percentage), current.measurements ?? []]);
    if (shown !== measured) {
      analyses = analysesOf(current).length ? analysisSections(current, opened) : null;
      measured = shown;
    }
    const focused = document.activeElement?.id;
    body.replaceChildren(...details(namespace, current, cohort, analyses), controls(namespace, current, may, refresh));
    if (focused) document.getElementById(focused)?.focus();
    last = current;
  };
  const schedule = () => {
    clearTimeout(timer);
    timer = null;
    if (!stopped && (!last || followed(last))) timer = setTimeout(poll, POLL_MS);
  };
  // Reads and draws the rollout now, then polls again while it is followed.
  const refresh = async () => {
    clearTimeout(timer);
    try {
      await draw();
    } finally {
      schedule();
    }
  };
  // A failed poll is shown above the last state, and polling goes on.
  const poll = () => refresh().catch((error) => {
    if (stopped) return;
    body.querySelector('.notice')?.remove();
    body.prepend(notice(error));
  });
  // A failure of the first read is the page's, and nothing is scheduled.
  await draw();
  schedule();
  return () => {
    stopped = true;
    clearTimeout(timer);
    timer = null;
  };
}

// Whether the page goes on asking: while the rollout moves, and once it
// completed until no runtime of its cohort is pending, since the runtimes
// report the candidates after the rollout made them active. An aborted or
// rolled-back rollout sent its cohort the stable versions: its counts of
// the candidates no longer move towards anything.
function followed(rollout) {
  if (!FINAL.includes(rollout.state)) return true;
  return rollout.state === 'ROLLOUT_STATE_COMPLETED' && (rollout.progress?.pending ?? 0) > 0;
}

function details(namespace, rollout, cohort, analyses) {
  const progress = rollout.progress ?? {};
  const count = (field) => progress[field] ?? 0;
  const size = count('cohort');
  const share = (field) => (size ? `${(100 * count(field)) / size}%` : '0');
  return [
    facts([
      ['State', h('strong', { id: 'rollout-state' }, state(rollout))],
      ['Targets', h('ul', { class: 'plain', id: 'rollout-targets' }, (rollout.targets ?? []).map((target) => h('li', {},
        link(`${route('namespaces', namespace, 'policies', target.name)}?version=${target.version}`, target.name),
        ` v${target.stableVersion ?? 0} → v${target.version}${target.label ? ` (${target.label})` : ''}`)))],
      ['Started', h('span', {}, time(rollout.createdAt), ' by ', rollout.createdBy ?? '—')],
      ['Reason', rollout.reason || '—'],
      rollout.startAt ? ['Starts at', time(rollout.startAt)] : null,
      ['Approvals', `${(rollout.approvals ?? []).length} of ${rollout.requiredApprovals ?? 0}${(rollout.approvals ?? []).length ? `: ${rollout.approvals.map((approval) => approval.by).join(', ')}` : ''}`],
      rollout.haltedBecause ? ['Halted because', h('span', { class: 'error' }, rollout.haltedBecause)] : null,
    ]),
    ...(rollout.impact ? [h('h2', {}, 'Impact on recorded decisions'), impactReport(rollout.impact, 'rollout-impact', 'h3')] : []),
    ...(analysesOf(rollout).length ? [h('h2', {}, 'Analyses'), analysisTable(rollout), analyses] : []),
    h('h2', {}, 'Steps'),
    timeline(rollout),
    h('h2', {}, 'Current cohort'),
    h('p', { id: 'rollout-progress' }, `${count('applied')} applied · ${count('rejected')} rejected · ${count('pending')} pending of ${size}`),
    h('div', { class: 'progress', role: 'img', 'aria-label': `${count('applied')} of ${size} applied` },
      bar('applied', share('applied')),
      bar('rejected', share('rejected'))),
    cohortTable(namespace, rollout, cohort),
  ];
}

// A protobuf Duration as JSON ("30s", "1.5s") in milliseconds.
const millis = (duration) => 1000 * parseFloat(duration ?? '0');

// "1 h 02 min 05 s", "42 s".
function span(ms) {
  const total = Math.max(0, Math.ceil(ms / 1000));
  const [hours, minutes, seconds] = [Math.floor(total / 3600), Math.floor(total / 60) % 60, total % 60];
  if (hours) return `${hours} h ${String(minutes).padStart(2, '0')} min ${String(seconds).padStart(2, '0')} s`;
  if (minutes) return `${minutes} min ${String(seconds).padStart(2, '0')} s`;
  return `${seconds} s`;
}

// The steps as a timeline: each done, baking (with the time left), paused,
// waiting or skipped, with the revision it took.
function timeline(rollout) {
  const steps = rollout.steps ?? [];
  const current = rollout.step ?? 0;
  const ended = FINAL.includes(rollout.state);
  const begun = ['ROLLOUT_STATE_RUNNING', 'ROLLOUT_STATE_PAUSED'].includes(rollout.state);
  return h('ol', { class: 'timeline', id: 'rollout-timeline' }, steps.map((entry, index) => {
    let status = 'waiting';
    if (index < current || (rollout.state === 'ROLLOUT_STATE_COMPLETED')) status = 'done';
    else if (index === current && begun) status = rollout.state === 'ROLLOUT_STATE_PAUSED' ? 'paused' : 'baking';
    else if (ended) status = 'not reached';
    const revision = rollout.stepRevisions?.[index];
    let clock = null;
    if (status === 'baking' && rollout.stepStartedAt) {
      const until = new Date(new Date(rollout.stepStartedAt).getTime() + millis(entry.bake));
      const left = until.getTime() - Date.now();
      clock = h('p', { class: 'countdown', id: 'bake-countdown' },
        left > 0 ? [`Bakes ${span(left)} more, until `, time(until.toISOString())] : 'Baked: the next step starts at the next tick.');
    }
    return h('li', { class: `step ${status.replace(' ', '-')}`, 'aria-current': index === current && !ended ? 'step' : null, 'data-status': status },
      h('span', { class: 'step-status' }, status),
      h('span', {}, `Step ${index + 1}: ${entry.percentage ?? 0}% of runtimes${entry.labelSelector ? ` matching ${entry.labelSelector}` : ''}, bake ${span(millis(entry.bake))}`),
      revision && revision !== '0' ? h('span', { class: 'muted' }, ` · revision ${revision}`) : null,
      index === current && begun && rollout.stepStartedAt ? h('span', { class: 'muted' }, ' · started ', time(rollout.stepStartedAt)) : null,
      clock,
      stepMeasurements(rollout, index));
  }));
}

// The rollout's analyses with where each is measured: the rollout's own in
// every step, a step's own in that step only.
function analysesOf(rollout) {
  return [
    ...(rollout.analyses ?? []).map((analysis) => ({ analysis, where: 'every step' })),
    ...(rollout.steps ?? []).flatMap((entry, index) => (entry.analyses ?? []).map((analysis) => ({ analysis, where: `step ${index + 1}` }))),
  ];
}

function analysisTable(rollout) {
  const headings = ['Analysis', 'Measured in', 'Query', 'Success condition', 'Every', 'Passes after', 'Tolerates'];
  return h('div', { id: 'rollout-analyses' }, table(headings, analysesOf(rollout).map(({ analysis, where }) => h('tr', { 'data-analysis': analysis.name }, cells(headings, [
    analysis.name,
    where,
    [h('code', { class: 'query' }, analysis.query), analysis.prometheus ? h('span', { class: 'muted' }, ` on ${analysis.prometheus}`) : null],
    h('code', {}, analysis.successCondition),
    span(millis(analysis.interval)),
    analysis.count ? `${analysis.count} measurements` : 'measures while its step runs',
    `${analysis.failureLimit ?? 0} failed, ${analysis.inconclusiveLimit ?? 0} inconclusive, ` +
      `${analysis.consecutiveErrorLimit ?? 4} errors in a row`,
  ]))), 'Analyses of the rollout', { stack: true }));
}

// The measurements of `name` in the rollout, oldest first, as the server
// sends them.
function measurementsOf(rollout, name) {
  return (rollout.measurements ?? []).filter((measurement) => measurement.analysis === name);
}

// A measurement's value as text, or "no value" and why.
function valueCell(measurement) {
  return measurement.value === undefined
    ? [h('span', { class: 'muted' }, 'no value'), measurement.message ? `: ${measurement.message}` : null]
    : h('code', {}, String(measurement.value));
}

// The outcome in words beside its colour.
function outcome(measurement) {
  const { name, kind } = phaseOf(measurement);
  return h('span', { class: `state ${kind}` }, name);
}

// When it was taken, as the tables write it.
const taken = (measurement) => time(measurement.takenAt).textContent;

// What each analysis measured in step `index`, a line each: the count by
// outcome and the last measurement; the chart and every value are under
// Analyses.
function stepMeasurements(rollout, index) {
  const lines = analysesOf(rollout).map(({ analysis }) => {
    const measured = measurementsOf(rollout, analysis.name).filter((measurement) => (measurement.step ?? 0) === index);
    if (!measured.length) return null;
    const last = measured.at(-1);
    return h('p', { class: 'step-measurements', 'data-analysis': analysis.name, 'data-step': index + 1 },
      h('strong', {}, analysis.name),
      ` in step ${index + 1}: ${measured.length} measurement${measured.length === 1 ? '' : 's'} (${tally(measured)}); the last, `,
      time(last.takenAt), ': ', valueCell(last), ' ', outcome(last));
  }).filter(Boolean);
  return lines.length ? h('div', { class: 'measurements' }, lines) : null;
}

// Each analysis's measurements over the steps it was measured in: a chart
// of its values against the bound of its condition, each outcome marked,
// and beneath it every measurement the server returned as a table, newest
// first (in a disclosure whose state `opened` keeps across redraws).
function analysisSections(rollout, opened) {
  const full = (rollout.measurements ?? []).length >= MEASUREMENTS_KEPT;
  const stepLabel = (index) => {
    const entry = rollout.steps?.[index];
    return `step ${index + 1}${entry ? ` · ${entry.percentage ?? 0}%` : ''}`;
  };
  const headings = ['Step', 'Taken', 'Value', 'Condition', 'Outcome'];
  return h('div', { id: 'rollout-measurements' }, analysesOf(rollout).map(({ analysis }) => {
    const name = analysis.name;
    const measured = measurementsOf(rollout, name);
    const heading = h('h3', { id: `measured-${name}` }, `Measurements of ${name}`);
    if (!measured.length) {
      return h('section', { class: 'analysis', 'data-analysis': name, 'aria-labelledby': `measured-${name}` },
        heading, h('p', { class: 'muted' }, 'None yet.'));
    }
    const condition = measured.at(-1).successCondition ?? analysis.successCondition;
    const counted = `${measured.length} measurement${measured.length === 1 ? '' : 's'} (${tally(measured)})`;
    const rows = table(headings, measured.slice().reverse().map((measurement) => h('tr', { 'data-phase': phaseOf(measurement).name }, cells(headings, [
      String((measurement.step ?? 0) + 1),
      time(measurement.takenAt),
      valueCell(measurement),
      h('code', {}, measurement.successCondition),
      outcome(measurement),
    ]))), `Measurements of ${name}, newest first`, { stack: true });
    const disclosure = h('details', { class: 'measurement-table', 'data-analysis': name, open: opened.has(name) },
      h('summary', {}, `Every measurement of ${name} as a table, newest first (${measured.length})`), rows);
    disclosure.addEventListener('toggle', () => (disclosure.open ? opened.add(name) : opened.delete(name)));
    return h('section', { class: 'analysis', 'data-analysis': name, 'aria-labelledby': `measured-${name}` },
      heading,
      h('p', { class: 'measurements-summary' }, counted,
        full ? `, of the newest ${MEASUREMENTS_KEPT} measurements of the rollout the server returns; older ones are not counted` : ''),
      measurementChart({ name, measurements: measured, condition, stepLabel, label: taken }),
      legend(measured, condition),
      disclosure);
  }));
}

// The runtimes that report a candidate version, with their outcome: the
// cohort as far as it has answered.
function cohortTable(namespace, rollout, cohort) {
  if (!cohort.length) return h('p', { class: 'muted', id: 'cohort' }, 'No runtime reports a candidate yet.');
  const headings = ['Runtime', 'Labels', 'Outcome'];
  return h('div', { id: 'cohort' }, table(headings, cohort.map(({ runtime, reports }) => h('tr', { 'data-runtime': runtime.id }, cells(headings, [
    runtimeName(runtime),
    Object.entries(runtime.labels ?? {}).map(([key, value]) => `${key}=${value}`).join(', ') || '—',
    h('ul', { class: 'plain' }, reports.map((report) => h('li', { class: report.state === 'APPLY_STATE_APPLIED' ? '' : 'error' },
      `${report.name} v${report.version}: ${report.state === 'APPLY_STATE_APPLIED' ? 'applied' : 'rejected'}`,
      report.error ? [': ', h('code', {}, report.error)] : ''))),
  ]))), 'Runtimes on a candidate', { stack: true }));
}

// The runtimes of the namespace reporting a target's candidate version.
async function cohortOf(namespace, rollout) {
  const candidates = new Map((rollout.targets ?? []).map((target) => [target.name, target.version]));
  const runtimes = await all(`${paths.namespace(namespace)}/runtimes`, 'runtimes', { name: rollout.targets?.[0]?.name, pageSize: 500 }, 10000);
  return runtimes.map((runtime) => ({
    runtime,
    reports: (runtime.policies ?? []).filter((report) => candidates.get(report.name) === report.version),
  })).filter((entry) => entry.reports.length);
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
