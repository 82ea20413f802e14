// A policy: the versions rail (active, published, draft), the selected
// version with its body (a Rego policy's modules as text), signature,
// requirements and notes, the actions its state allows the caller, and a
// form to compare two versions.

import { all, allowed, get, paths, post } from '../api.js';
import { confirmAction } from '../confirm.js';
import { bodyView } from '../body.js';
import { announce, facts, h, link, route, table, tabs, time, versionState } from '../dom.js';
import { follow } from '../live.js';
import { signatureStatus } from '../signature.js';
import { namespaceCrumbs } from './home.js';
import { isLive, rolloutsOf, state as rolloutState } from './rollouts.js';

export function policyTabs(namespace, name, current) {
  const base = ['namespaces', namespace, 'policies', name];
  return tabs('Policy', current, [
    ['Versions', route(...base)],
    ['Schema', route(...base, 'schema')],
    ['Fleet', route(...base, 'fleet')],
    ['Events', `${route('namespaces', namespace, 'events')}?name=${encodeURIComponent(name)}`],
  ]);
}

export function policyCrumbs(namespace, name, last) {
  return namespaceCrumbs(namespace, [name, route('namespaces', namespace, 'policies', name)], ...(last ? [last] : []));
}

export async function policy(view, [namespace, name], query, { crumbs, rerender }) {
  crumbs(policyCrumbs(namespace, name));
  document.title = `${namespace}/${name} · policyhub`;
  const base = paths.policy(namespace, name);
  const [versions, may, rollouts, schedules] = await Promise.all([
    all(`${base}/versions`, 'versions'),
    allowed(namespace),
    rolloutsOf(namespace, name),
    get(`${paths.namespace(namespace)}/schedules`).then((reply) => reply.schedules ?? []),
  ]);
  const holder = rollouts.find(isLive) ?? null;
  const active = versions.find((version) => version.active);
  const wanted = Number(query.get('version'));
  const selected = versions.find((version) => version.version === wanted) ?? active ?? versions[0];
  view.append(h('h1', {}, `${namespace} / ${name}`), policyTabs(namespace, name, 'Versions'));
  if (!selected) {
    view.append(h('p', {}, 'This policy has no version.'));
    return;
  }
  const draftRoute = route('namespaces', namespace, 'policies', name, 'draft');
  const rail = h(
    'nav',
    { class: 'rail', 'aria-label': 'Versions' },
    h('h2', {}, 'Versions'),
    h('ol', {}, versions.map((version) => h(
      'li',
      { 'data-version': version.version, 'data-state': railState(version) },
      h(
        'a',
        { href: `${route('namespaces', namespace, 'policies', name)}?version=${version.version}`, 'aria-current': version === selected ? 'true' : null },
        h('span', {}, `v${version.version} `, h('span', { class: 'label' }, version.label ?? '')),
        versionState(version),
      ),
    ))),
  );
  const detail = h('section', { class: 'detail', 'aria-labelledby': 'version-title' });
  detail.append(
    h('h2', { id: 'version-title' }, `Version ${selected.version} `, versionState(selected)),
    holds(namespace, name, holder, schedules),
    actions(namespace, name, selected, active, may, rerender, holder),
    may.has('Draft') ? h('p', { class: 'authoring' },
      h('a', { href: `${draftRoute}?from=${selected.version}`, id: 'draft-from' }, `New draft from version ${selected.version}`),
      active && active !== selected ? [' · ', h('a', { href: draftRoute }, 'New draft from the active version')] : null) : '',
  );
  const signature = h('span', { id: 'signature' }, 'checking…');
  detail.append(facts([
    ['Label', selected.label || '—'],
    ['Digest', h('code', {}, selected.digest)],
    ['Signature', signature],
    ['Requirements', requirements(selected.requirements)],
    ['Change notes', selected.changeNotes || '—'],
    ['Created', h('span', {}, time(selected.createdAt), ' by ', selected.createdBy ?? '—')],
    selected.publishedAt ? ['Published', h('span', {}, time(selected.publishedAt), ' by ', selected.publishedBy ?? '—')] : null,
  ]));
  detail.append(h('h3', {}, 'Body'), bodyView(selected.body, { id: 'body', label: `version ${selected.version}` }));
  if (versions.length > 1) detail.append(compareForm(namespace, name, versions, selected, active));
  detail.append(rolloutHistory(namespace, rollouts));
  view.append(h('div', { class: 'policy' }, rail, detail));
  signatureStatus(selected).then(
    (status) => {
      signature.textContent = status.text;
      signature.className = status.ok === false && selected.jws ? 'error' : '';
    },
    (error) => {
      signature.textContent = `not checked: ${error.message}`;
    },
  );
  // An activation, a rollback or a rollout's step made anywhere redraws the
  // page.
  return follow({ namespace, names: [name], onChange: async () => rerender() });
}

function railState(version) {
  if (version.active) return 'active';
  return String(version.state).replace('VERSION_STATE_', '').toLowerCase();
}

function requirements(list) {
  if (!list?.length) return '—';
  return h('ul', {}, list.map((requirement) => h('li', {}, h('code', {}, `${requirement.name} ${requirement.range}`))));
}

function describe(version) {
  return `version ${version.version}${version.label ? ` (${version.label})` : ''}`;
}

// What else moves this policy: the live rollout that holds it (the server
// refuses to activate or roll it back meanwhile) and the schedules that
// activate it.
function holds(namespace, name, holder, schedules) {
  const scheduled = schedules.filter((schedule) => (schedule.entries ?? [])
    .some((entry) => (entry.targets ?? []).some((target) => target.name === name)));
  const lines = [];
  if (holder) {
    const target = holder.targets.find((entry) => entry.name === name);
    lines.push(h('p', { id: 'held' },
      h('strong', {}, 'Held by a rollout: '),
      link(route('namespaces', namespace, 'rollouts', holder.id), `rollout ${holder.id.slice(0, 8)}`),
      ` (${rolloutState(holder)}, step ${(holder.step ?? 0) + 1} of ${(holder.steps ?? []).length}) moves it from v${target.stableVersion ?? 0} to v${target.version}. `,
      'Until it completes or is promoted or aborted, the server refuses to activate or roll back this policy.'));
  }
  for (const schedule of scheduled) {
    const next = (schedule.upcoming ?? []).find((firing) => (schedule.entries ?? [])
      .find((entry) => entry.name === firing.entry)?.targets?.some((target) => target.name === name));
    lines.push(h('p', { class: 'scheduled', 'data-schedule': schedule.name },
      h('strong', {}, 'Scheduled: '),
      link(route('namespaces', namespace, 'schedules'), `schedule ${schedule.name}`),
      schedule.paused ? ' activates versions of this policy on its own (paused now).'
        : [' activates versions of this policy on its own', next ? [', next at ', time(next.at), ` (${next.entry})`] : '', '.']));
  }
  return lines.length ? h('div', { class: 'notice holds' }, lines) : '';
}

// The rollouts that moved or move this policy, newest first.
function rolloutHistory(namespace, rollouts) {
  return h('section', { 'aria-labelledby': 'policy-rollouts' },
    h('h3', { id: 'policy-rollouts' }, 'Rollouts of this policy'),
    rollouts.length
      ? table(['Rollout', 'State', 'Versions', 'Started'], rollouts.map((rollout) => h('tr', {},
        h('th', { scope: 'row' }, link(route('namespaces', namespace, 'rollouts', rollout.id), h('code', {}, rollout.id.slice(0, 8)))),
        h('td', {}, rolloutState(rollout)),
        h('td', {}, rollout.targets.map((target) => `${target.name} v${target.stableVersion ?? 0} → v${target.version}`).join(', ')),
        h('td', {}, time(rollout.createdAt)),
      )), 'Rollouts of this policy')
      : h('p', { class: 'muted' }, 'None.'));
}

// The actions the version's state allows, of those the caller may call;
// while a rollout holds the policy, those the server would refuse are
// named with the reason instead.
function actions(namespace, name, version, active, may, rerender, holder) {
  const base = paths.policy(namespace, name);
  const subject = `${namespace}/${name}`;
  const activeNumber = active?.version ?? 0;
  const done = (text, version) => () => {
    announce(text);
    const next = `${route('namespaces', namespace, 'policies', name)}?version=${version}`;
    if (window.location.hash === next) rerender();
    else window.location.hash = next;
  };
  const buttons = [];
  const add = (method, text, options, danger = false) => {
    if (!may.has(method)) return;
    buttons.push(h('button', { type: 'button', class: danger ? 'danger' : '', onclick: () => confirmAction({ ...options, title: `${text}: ${subject}`, confirmLabel: text.replace('…', ''), danger }) }, text));
  };
  if (version.state === 'VERSION_STATE_DRAFT') {
    add('Publish', 'Publish…', {
      summary: [
        `Publish draft ${describe(version)} of ${subject} as an immutable version signed by the server's current key.`,
        'It does not become active: activate it afterwards, or start a rollout.',
      ],
      fields: [{ name: 'label', label: 'Label', placeholder: 'e.g. 1.2.0 (optional)' }, { name: 'reason', label: 'Reason' }],
      run: async ({ label, reason }) => {
        await post(`${base}:publish`, { version: version.version, label, reason });
        done(`Published version ${version.version}`, version.version)();
      },
    });
    add('DiscardDraft', 'Discard draft…', {
      summary: [`Discard draft ${describe(version)} of ${subject}. It stays in the history as discarded; nothing active changes.`],
      fields: [{ name: 'reason', label: 'Reason' }],
      run: async ({ reason }) => {
        await post(`${base}/drafts:discard`, { version: version.version, reason });
        done(`Discarded draft ${version.version}`, activeNumber || version.version)();
      },
    }, true);
  }
  const refused = [];
  if (version.state === 'VERSION_STATE_PUBLISHED' && !version.active && holder) {
    refused.push(h('p', { id: 'refused' }, `Activate and roll back are not offered: rollout ${holder.id.slice(0, 8)} holds ${subject}.`));
  }
  if (version.state === 'VERSION_STATE_PUBLISHED' && !version.active && !holder) {
    const from = activeNumber ? `version ${activeNumber}` : 'nothing';
    add('Activate', 'Activate…', {
      summary: [
        `Make ${describe(version)} the active version of ${subject}, in place of ${from}.`,
        `Every runtime watching ${namespace} receives it at the next revision. Refused if another version became active meanwhile.`,
      ],
      fields: [{ name: 'reason', label: 'Reason' }],
      run: async ({ reason }) => {
        await post('policies:activate', { targets: [{ namespace, name, version: version.version, expectedActiveVersion: activeNumber }], reason });
        done(`Activated version ${version.version}`, version.version)();
      },
    });
    if (activeNumber) {
      add('Rollback', 'Roll back to this version…', {
        summary: [
          `Roll ${subject} back from version ${activeNumber} to ${describe(version)}, re-validated against today's schema.`,
          `Runtimes receive version ${version.version} at the next revision; version ${activeNumber} stays published.`,
        ],
        fields: [{ name: 'reason', label: 'Reason', required: true }],
        run: async ({ reason }) => {
          await post(`${base}:rollback`, { toVersion: version.version, reason, expectedActiveVersion: activeNumber });
          done(`Rolled back to version ${version.version}`, version.version)();
        },
      }, true);
      add('Rollback', 'Restore as a new version…', {
        summary: [
          `Copy the body and requirements of ${describe(version)} forward as a new version of ${subject}, signed, published and activated in place of version ${activeNumber}.`,
          `Its change notes will read "Restored from version ${version.version}: <reason>". An open draft is superseded.`,
        ],
        fields: [{ name: 'reason', label: 'Reason', required: true }],
        run: async ({ reason }) => {
          const reply = await post(`${base}:rollback`, { toVersion: version.version, restore: true, reason, expectedActiveVersion: activeNumber });
          done(`Restored version ${version.version} as version ${reply.version}`, reply.version)();
        },
      });
    }
  }
  if (!buttons.length && refused.length) return h('div', {}, refused);
  if (!buttons.length) return h('p', { class: 'muted', id: 'no-actions' }, version.active ? 'The active version: nothing to do here.' : 'No action for you on this version.');
  return h('div', {}, h('div', { class: 'actions', id: 'actions' }, buttons), refused);
}

function compareForm(namespace, name, versions, selected, active) {
  const options = (chosen) => versions.map((version) => h('option', { value: version.version, selected: version.version === chosen }, `v${version.version}${version.label ? ` ${version.label}` : ''}`));
  const other = active && active !== selected ? active.version : versions.find((version) => version !== selected).version;
  const from = h('select', { id: 'diff-from', name: 'from' }, options(Math.min(other, selected.version)));
  const to = h('select', { id: 'diff-to', name: 'to' }, options(Math.max(other, selected.version)));
  const form = h(
    'form',
    { 'aria-labelledby': 'compare-title' },
    h('h3', { id: 'compare-title' }, 'Compare versions'),
    h('div', { class: 'row' },
      h('div', {}, h('label', { for: 'diff-from' }, 'From'), from),
      h('div', {}, h('label', { for: 'diff-to' }, 'To'), to),
      h('button', { type: 'submit' }, 'Compare')),
  );
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    window.location.hash = `${route('namespaces', namespace, 'policies', name, 'diff')}?from=${from.value}&to=${to.value}`;
  });
  return form;
}
