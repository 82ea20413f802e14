// The schedules of a namespace: each entry's pattern and zone, what it
// activates (pinned by digest), the next firings in the entry's zone and in
// UTC, the last firing and why a schedule paused; Pause and Resume for
// those allowed to.

import { allowed, get, paths, post } from '../api.js';
import { confirmAction } from '../confirm.js';
import { announce, h, table, time } from '../dom.js';
import { follow } from '../live.js';
import { namespaceCrumbs, namespaceTabs } from './home.js';

export async function schedules(view, [namespace], _query, { crumbs, rerender }) {
  crumbs(namespaceCrumbs(namespace, 'Schedules'));
  document.title = `Schedules of ${namespace} · policyhub`;
  const read = () => get(`${paths.namespace(namespace)}/schedules`).then((reply) => reply.schedules ?? []);
  const [list, may] = await Promise.all([read(), allowed(namespace)]);
  const draw = (entries) => (entries.length
    ? table(['Schedule', 'Entries', 'Next firings (the entry\'s zone, UTC)', 'Last firing', 'State', 'Action'], entries.map((schedule) => row(namespace, schedule, may, rerender)), `Schedules of ${namespace}`)
    : h('p', {}, 'No schedule in this namespace. Set one with ', h('code', {}, 'policyhub set-policy-schedule'), '.'));
  const listing = h('div', { id: 'schedules' }, draw(list));
  view.append(h('h1', {}, `Schedules of ${namespace}`), namespaceTabs(namespace, 'Schedules'), listing);
  // Firings pass and schedules are paused elsewhere: read again every few
  // seconds, and when the watch brings a change.
  return follow({ namespace, every: 10000, onChange: async () => listing.replaceChildren(draw(await read())) });
}

function targets(entry) {
  return (entry.targets ?? []).map((target) => `${target.name} v${target.version}${target.label ? ` (${target.label})` : ''}`).join(', ');
}

function row(namespace, schedule, may, rerender) {
  const last = schedule.lastFiring;
  return h(
    'tr',
    { 'data-schedule': schedule.name },
    h('th', { scope: 'row' }, schedule.name),
    h('td', {}, h('ul', {}, (schedule.entries ?? []).map((entry) => h('li', {}, h('strong', {}, entry.name), ': ', h('code', {}, entry.cron), ` in ${entry.timeZone} → ${targets(entry)}`)))),
    h('td', {}, (schedule.upcoming ?? []).length
      ? h('ol', {}, schedule.upcoming.map((firing) => {
        const zone = (schedule.entries ?? []).find((entry) => entry.name === firing.entry)?.timeZone;
        return h('li', {}, zone ? [h('span', { class: 'zoned' }, zoned(firing.at, zone)), ' · '] : null, time(firing.at), ` ${firing.entry}`);
      }))
      : h('span', { class: 'muted' }, '—')),
    h('td', {}, last ? [time(last.at), ` ${last.entry}`, last.error ? h('span', { class: 'error' }, `: refused: ${last.error}`) : ` (revision ${last.revision ?? 0})`] : h('span', { class: 'muted' }, 'never')),
    h('td', { class: 'schedule-state' }, schedule.paused ? `paused: ${schedule.pausedBecause || 'no reason given'}` : 'running'),
    h('td', {}, control(namespace, schedule, may, rerender)),
  );
}

// A time in `zone`, as the schedule's author reads it: "2026-11-27 08:00
// Europe/Paris".
function zoned(value, zone) {
  const parts = Object.fromEntries(new Intl.DateTimeFormat('en-CA', {
    timeZone: zone, year: 'numeric', month: '2-digit', day: '2-digit', hour: '2-digit', minute: '2-digit', hourCycle: 'h23',
  }).formatToParts(new Date(value)).map((part) => [part.type, part.value]));
  return `${parts.year}-${parts.month}-${parts.day} ${parts.hour}:${parts.minute} ${zone}`;
}

function control(namespace, schedule, may, rerender) {
  const [method, verb, text, summary] = schedule.paused
    ? ['ResumeSchedule', 'resume', 'Resume', `Resume schedule ${schedule.name}: its entries fire again from their next time; the missed ones do not.`]
    : ['PauseSchedule', 'pause', 'Pause', `Pause schedule ${schedule.name}: nothing it names is activated until it is resumed. What it activated stays active.`];
  if (!may.has(method)) return '';
  return h('button', {
    type: 'button',
    onclick: () => confirmAction({
      title: `${text} schedule ${schedule.name}`,
      summary: [summary],
      fields: [{ name: 'reason', label: 'Reason' }],
      confirmLabel: text,
      run: async ({ reason }) => {
        await post(`${paths.namespace(namespace)}/schedules/${encodeURIComponent(schedule.name)}:${verb}`, { reason });
        announce(`${text}: done`);
        rerender();
      },
    }),
  }, `${text}…`);
}
