// A policy's JSON Schema: shown to all who may read the policy, set or
// removed by those who may call SetSchema. Before a schema is saved, the
// server's dry run lists the versions it would reject; once saved, what the
// active version violates (it stays active).

import { allowed, paths, policyRecord, put } from '../api.js';
import { announce, h, link, notice, prettyJson, route } from '../dom.js';
import { jsonEditor } from '../jsoneditor.js';
import { policyCrumbs, policyTabs } from './policy.js';

export async function schema(view, [namespace, name], _query, { crumbs }) {
  crumbs(policyCrumbs(namespace, name, 'Schema'));
  document.title = `Schema of ${namespace}/${name} · policyhub`;
  const [record, may] = await Promise.all([policyRecord(namespace, name), allowed(namespace)]);
  if (!record) throw new Error(`The policy ${namespace}/${name} does not exist.`);
  view.append(h('h1', {}, `Schema of ${namespace} / ${name}`), policyTabs(namespace, name, 'Schema'));
  view.append(record.schema
    ? h('pre', { id: 'schema', tabindex: '0', 'aria-label': 'The JSON Schema' }, prettyJson(record.schema))
    : h('p', { id: 'schema' }, 'This policy has no schema: any JSON object can be published.'));
  if (!may.has('SetSchema')) return;

  const editor = jsonEditor('schema-json', 'New schema (JSON)', record.schema ?? { type: 'object', properties: {} });
  const reason = h('input', { id: 'schema-reason', name: 'reason', type: 'text', autocomplete: 'off' });
  const outcome = h('div', { id: 'schema-outcome', tabindex: '-1' });
  const form = h('form', { 'aria-labelledby': 'set-schema-title', novalidate: true },
    h('h2', { id: 'set-schema-title' }, 'Set the schema'),
    h('p', { class: 'help' }, 'Versions must satisfy it to be published or activated. A version already active stays active; the server lists what it violates.'),
    editor.element,
    h('label', { for: 'schema-reason' }, 'Reason'),
    reason,
    outcome,
    h('div', { class: 'actions' },
      h('button', { type: 'submit', class: 'primary', id: 'schema-check' }, 'Check against the versions'),
      record.schema ? h('button', { type: 'button', id: 'schema-remove', class: 'danger', onclick: () => save(null) }, 'Remove the schema') : null));
  const save = async (value) => {
    try {
      const reply = await put(`${paths.policy(namespace, name)}/schema`, { schema: value ?? undefined, reason: reason.value.trim() });
      const violations = reply.activeVersionViolations ?? [];
      announce(value ? 'Schema saved' : 'Schema removed');
      outcome.replaceChildren(h('div', { class: violations.length ? 'notice' : '', role: 'status' },
        h('p', {}, value ? 'Schema saved.' : 'Schema removed.'),
        violations.length ? [h('p', {}, 'The active version violates it (it stays active; activating it again would be refused):'),
          h('ul', {}, violations.map((violation) => h('li', {}, violation)))] : null));
      const shown = view.querySelector('#schema');
      shown.replaceWith(value ? h('pre', { id: 'schema', tabindex: '0', 'aria-label': 'The JSON Schema' }, prettyJson(value)) : h('p', { id: 'schema' }, 'This policy has no schema.'));
    } catch (error) {
      outcome.replaceChildren(notice(error));
    }
    outcome.focus();
  };
  // The dry run: which published versions and open draft the schema
  // would reject, then Save.
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    let value;
    try {
      value = editor.read();
      const reply = await put(`${paths.policy(namespace, name)}/schema`, { schema: value, dryRun: true });
      const rejected = reply.rejectedVersions ?? [];
      const versionLink = (entry) => link(`${route('namespaces', namespace, 'policies', name)}?version=${entry.version}`,
        `Version ${entry.version}${entry.label ? ` (${entry.label})` : ''}`);
      outcome.replaceChildren(h('div', { id: 'schema-rejections' },
        rejected.length
          ? [h('p', {}, `This schema would reject ${rejected.length} version${rejected.length === 1 ? '' : 's'}: publishing, activating or rolling back to ${rejected.length === 1 ? 'it' : 'them'} would be refused.`),
            h('ul', {}, rejected.map((entry) => h('li', { 'data-version': entry.version }, versionLink(entry),
              entry.active ? ' (active: it stays active)' : entry.state === 'VERSION_STATE_DRAFT' ? ' (the open draft)' : '',
              h('ul', {}, (entry.violations ?? []).map((violation) => h('li', {}, h('code', {}, violation)))))))]
          : h('p', {}, 'No published version and no open draft breaks this schema.'),
        h('div', { class: 'actions' }, h('button', { type: 'button', class: 'primary', id: 'schema-save', onclick: () => save(value) }, 'Save schema'))));
    } catch (error) {
      outcome.replaceChildren(notice(error));
    }
    outcome.focus();
  });
  view.append(form);
}
