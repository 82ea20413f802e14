// Writing a draft: the body in a form made from the policy's JSON Schema
// (or in a JSON editor, always at hand), change notes and requirements;
// a review against the active version before saving; then Publish and
// Activate from the same page. The server's refusals are shown at the field
// they name.

import { ApiError, all, allowed, get, paths, policyRecord, post } from '../api.js';
import { regoBody } from '../body.js';
import { confirmAction } from '../confirm.js';
import { announce, h, link, notice, route } from '../dom.js';
import { jsonEditor } from '../jsoneditor.js';
import { schemaForm, supports } from '../schemaform.js';
import { bodyDiff } from './compare.js';
import { impactReport } from './decisions.js';
import { policyCrumbs, policyTabs } from './policy.js';

export async function draft(view, [namespace, name], query, { crumbs }) {
  crumbs(policyCrumbs(namespace, name, 'New draft'));
  document.title = `New draft of ${namespace}/${name} · policyhub`;
  const base = paths.policy(namespace, name);
  const [record, may] = await Promise.all([policyRecord(namespace, name), allowed(namespace)]);
  // A policy yet to be created has no version to ask for.
  const versions = record ? await all(`${base}/versions`, 'versions') : [];
  const active = versions.find((version) => version.active) ?? null;
  const from = query.has('from') ? versions.find((version) => version.version === Number(query.get('from'))) : null;
  if (query.has('from') && !from) throw new Error(`${namespace}/${name} has no version ${query.get('from')}.`);
  const start = from ?? active;
  const schema = record?.schema ?? null;
  view.append(
    h('h1', {}, `New draft of ${namespace} / ${name}`),
    versions.length ? policyTabs(namespace, name, null) : '',
  );
  if (!may.has('Draft')) {
    view.append(h('p', { id: 'no-actions' }, `You may not write drafts in ${namespace}.`));
    return;
  }
  view.append(h('p', { id: 'draft-start' }, start
    ? `Starting from version ${start.version}${start.label ? ` (${start.label})` : ''}${start === active ? ', the active version' : ''}.`
    : versions.length ? 'Starting from an empty body: no version is active.' : `The first version of ${name}: the policy is created when this draft is saved.`));
  if (versions.some((version) => version.state === 'VERSION_STATE_DRAFT')) {
    const open = versions.find((version) => version.state === 'VERSION_STATE_DRAFT');
    view.append(h('p', { class: 'muted' }, `Saving supersedes the open draft, version ${open.version}.`));
  }
  view.append(h('div', { id: 'draft-page' }, ...authoring({ namespace, name, base, schema, start, active, may })));
}

function authoring({ namespace, name, base, schema, start, active, may }) {
  const formable = schema && supports(schema);
  let body = start?.body ?? {};
  let mode = formable ? 'form' : 'json';
  let editor = null;
  const editorPlace = h('div', { id: 'draft-editor' });
  const modeError = h('p', { class: 'error', role: 'alert', id: 'mode-error' });
  const makeEditor = () => {
    editor = mode === 'form' ? schemaForm(schema, body) : jsonEditor('draft-json', 'Body (JSON)', body);
    editorPlace.replaceChildren(editor.element);
  };
  makeEditor();
  const modeButtons = formable ? ['form', 'json'].map((which) => h('button', {
    type: 'button',
    id: `mode-${which}`,
    'aria-pressed': String(which === mode),
    onclick: () => {
      if (which === mode) return;
      try {
        body = editor.read();
      } catch (error) {
        modeError.textContent = `${error.message} Fix it to switch to the form.`;
        return;
      }
      modeError.textContent = '';
      mode = which;
      modeButtons.forEach((button) => button.setAttribute('aria-pressed', String(button.id === `mode-${mode}`)));
      makeEditor();
    },
  }, which === 'form' ? 'Form' : 'JSON')) : [];

  const notes = h('textarea', { id: 'draft-notes', name: 'changeNotes', rows: 3, 'aria-describedby': 'draft-notes-help' });
  const requirements = requirementsEditor(start?.requirements ?? []);
  const errors = h('div', { id: 'draft-errors', tabindex: '-1' });
  const review = h('section', { id: 'draft-review', 'aria-labelledby': 'review-title', hidden: true });
  const outcome = h('section', { id: 'draft-outcome', 'aria-live': 'polite' });

  const clear = () => {
    errors.replaceChildren();
    editor.clearErrors();
    requirements.clearErrors();
  };
  // Each violation at its field; the rest, and a list of all, above.
  const showRefusal = (refusal, lead) => {
    const violations = refusal instanceof ApiError ? refusal.violations() : [];
    const forBody = violations.filter((violation) => violation.pointer !== undefined);
    const left = editor.showErrors(forBody);
    const unplaced = [...left, ...violations.filter((violation) => violation.field !== undefined && !requirements.showError(violation))];
    errors.replaceChildren(h('div', { class: 'notice', role: 'alert' },
      h('p', {}, lead ?? refusal.message),
      violations.length ? h('ul', {}, violations.map((violation) => h('li', {},
        h('code', {}, violation.pointer !== undefined ? violation.pointer || '/' : violation.field), `: ${violation.message}`))) : null,
      unplaced.length && unplaced.length < violations.length ? h('p', {}, 'The others are marked at their fields.') : null));
    const first = editorPlace.querySelector('[aria-invalid="true"], .invalid input, .invalid select')
      ?? requirements.element.querySelector('[aria-invalid="true"]');
    return () => (first ?? errors).focus();
  };

  const read = () => ({
    body: editor.read(),
    changeNotes: notes.value.trim(),
    requirements: requirements.read(),
  });

  const form = h('form', { id: 'draft-form', novalidate: true, 'aria-labelledby': 'draft-title' },
    h('h2', { id: 'draft-title' }, 'Body'),
    formable ? h('div', { class: 'actions', role: 'group', 'aria-label': 'Edit the body as' }, modeButtons) : h('p', { class: 'muted' }, schema ? 'The policy\'s schema is beyond the form: edit the JSON.' : 'The policy has no schema: edit the JSON.'),
    modeError,
    editorPlace,
    h('h2', {}, 'Change notes'),
    h('label', { for: 'draft-notes' }, 'Change notes (optional)'),
    h('p', { class: 'help', id: 'draft-notes-help' }, 'What changes and why, for the history and the reviewers.'),
    notes,
    h('h2', {}, 'Requirements'),
    requirements.element,
    errors,
    h('div', { class: 'actions' }, h('button', { type: 'submit', class: 'primary', id: 'draft-review-button' }, 'Review changes')),
  );
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    clear();
    let next;
    try {
      next = read();
    } catch (error) {
      errors.replaceChildren(notice(error));
      errors.focus();
      return;
    }
    review.hidden = false;
    review.replaceChildren(
      h('h2', { id: 'review-title', tabindex: '-1' }, active ? `Changes against the active version ${active.version}` : 'The new body (nothing is active)'),
      bodyDiff(active?.body, next.body, [active ? `Version ${active.version} (active)` : 'Nothing active', 'This draft'], 'h3'),
      requirementsLine(active?.requirements, next.requirements),
      h('div', { class: 'actions' },
        h('button', { type: 'button', class: 'primary', id: 'draft-save', onclick: () => save(next) }, 'Save draft'),
        h('button', { type: 'button', onclick: () => {
          review.hidden = true;
          form.querySelector('#draft-review-button').focus();
        } }, 'Back to editing')),
    );
    review.querySelector('#review-title').focus();
  });

  const save = async (next) => {
    const button = review.querySelector('#draft-save');
    button.disabled = true;
    try {
      const reply = await post(`${base}/drafts`, { ...next, idempotencyKey: crypto.randomUUID() });
      const saved = reply.version;
      review.hidden = true;
      announce(`Saved draft version ${saved.version}`);
      showSaved(saved, reply.supersededVersion, next.body);
    } catch (refusal) {
      button.disabled = false;
      review.hidden = true;
      showRefusal(refusal, `The draft was not saved: ${refusal.message}`)();
    }
  };

  // The saved draft, with Publish and then Activate.
  const showSaved = (saved, superseded, body) => {
    const versionLink = link(`${route('namespaces', namespace, 'policies', name)}?version=${saved.version}`, `version ${saved.version}`);
    const buttons = h('div', { class: 'actions', id: 'draft-actions' });
    outcome.replaceChildren(
      h('h2', { id: 'outcome-title', tabindex: '-1' }, `Draft version ${saved.version} saved`),
      h('p', {}, 'Saved as draft ', versionLink, superseded ? `, superseding draft ${superseded}` : '', '. Runtimes see nothing until it is published and activated.'),
      buttons,
    );
    const subject = `${namespace}/${name}`;
    if (may.has('Publish')) {
      // Where the focus goes once the dialog has closed (closing it gives
      // the focus back to the button that opened it).
      let then = null;
      buttons.append(h('button', { type: 'button', class: 'primary', id: 'draft-publish', onclick: () => confirmAction({
        title: `Publish: ${subject}`,
        summary: [`Publish draft version ${saved.version} of ${subject} as an immutable version signed by the server's current key, after the server checks it against the policy's schema.`, 'It does not become active: activate it afterwards.'],
        fields: [{ name: 'label', label: 'Label', placeholder: 'e.g. 1.2.0 (optional)' }, { name: 'reason', label: 'Reason' }],
        confirmLabel: 'Publish',
        run: async ({ label, reason }) => {
          try {
            await post(`${base}:publish`, { version: saved.version, label, reason });
          } catch (refusal) {
            if (!(refusal instanceof ApiError) || !refusal.violations().length) throw refusal;
            // Back to the form, each violation at its field.
            then = showRefusal(refusal, `Version ${saved.version} was not published: ${refusal.message.split(':')[0]}. Fix the fields marked, review and save again.`);
            return;
          }
          announce(`Published version ${saved.version}`);
          then = () => showPublished(saved, label);
        },
      }).then((done) => {
        if (!done) return;
        outcome.replaceChildren();
        then?.();
      }) }, 'Publish…'));
    } else {
      buttons.append(h('p', { class: 'muted' }, `You may not publish in ${namespace}: a publisher will.`));
    }
    outcome.querySelector('#outcome-title').focus();
    // Every body of a namespace served to OPA is a Rego body, and only
    // those namespaces have decisions to replay.
    if (may.has('AnalyzeImpact') && regoBody(body)) showImpact(saved);
  };

  // What the draft would decide differently from the active bundle on the
  // decisions OPAs recorded, before it is published; nothing for a
  // namespace not served to OPA.
  const showImpact = async (saved) => {
    const section = h('section', { id: 'draft-impact', 'aria-labelledby': 'impact-title', 'aria-busy': 'true' },
      h('h3', { id: 'impact-title' }, 'Impact on recorded decisions'),
      h('p', { class: 'muted' }, 'Replaying the decisions OPAs recorded…'));
    outcome.querySelector('#draft-actions').before(section);
    try {
      const report = await get(`${base}/versions/${saved.version}/impact`);
      section.replaceChildren(section.firstChild, impactReport(report, 'draft-impact-report', 'h4'));
    } catch (refusal) {
      if (refusal instanceof ApiError && refusal.status === 404) section.remove();
      else section.replaceChildren(section.firstChild, notice(refusal));
    } finally {
      section.removeAttribute('aria-busy');
    }
  };

  const showPublished = (saved, label) => {
    const subject = `${namespace}/${name}`;
    const buttons = h('div', { class: 'actions', id: 'draft-actions' });
    outcome.replaceChildren(
      h('h2', { id: 'outcome-title', tabindex: '-1' }, `Version ${saved.version} published`),
      h('p', {}, link(`${route('namespaces', namespace, 'policies', name)}?version=${saved.version}`, `Version ${saved.version}${label ? ` (${label})` : ''}`), ' is published and signed; ', active ? `version ${active.version} stays active until this one is activated.` : 'nothing is active yet.'),
      buttons,
    );
    if (may.has('Activate')) {
      buttons.append(h('button', { type: 'button', class: 'primary', id: 'draft-activate', onclick: () => confirmAction({
        title: `Activate: ${subject}`,
        summary: [`Make version ${saved.version} the active version of ${subject}, in place of ${active ? `version ${active.version}` : 'nothing'}.`, `Every runtime watching ${namespace} receives it at the next revision. Refused if another version became active meanwhile.`],
        fields: [{ name: 'reason', label: 'Reason' }],
        confirmLabel: 'Activate',
        run: async ({ reason }) => {
          await post('policies:activate', { targets: [{ namespace, name, version: saved.version, expectedActiveVersion: active?.version ?? 0 }], reason });
          announce(`Activated version ${saved.version}`);
          window.location.hash = `${route('namespaces', namespace, 'policies', name)}?version=${saved.version}`;
        },
      }) }, 'Activate…'));
    }
    outcome.querySelector('#outcome-title').focus();
  };

  return [form, review, outcome];
}

function requirementsLine(before, after) {
  const text = (list) => (list ?? []).map((requirement) => `${requirement.name} ${requirement.range}`).join(', ') || 'none';
  return h('p', { id: 'review-requirements' }, text(before) === text(after) ? `Requirements: ${text(after)} (unchanged)` : `Requirements: ${text(before)} → ${text(after)}`);
}

// The requirements: rows of a policy name and a semver range.
function requirementsEditor(initial) {
  const rows = [];
  let serial = 0;
  const list = h('ol', { class: 'items', id: 'requirements' });
  const add = h('button', { type: 'button', id: 'requirement-add' }, 'Add a requirement');
  const makeRow = (requirement) => {
    serial += 1;
    const index = serial;
    const field = (key, label, value, hint) => {
      const id = `requirement-${index}-${key}`;
      const input = h('input', { id, type: 'text', autocomplete: 'off', value: value ?? null, 'aria-describedby': `${id}-error`, placeholder: hint });
      const error = h('p', { class: 'field-error', id: `${id}-error`, hidden: true });
      return { input, error, element: h('div', { class: 'field' }, h('label', { for: id }, label), input, error) };
    };
    const row = { name: field('name', 'Policy', requirement.name), range: field('range', 'Range', requirement.range, 'e.g. >=1.5.0, <2') };
    row.element = h('li', { class: 'row' }, row.name.element, row.range.element, h('button', {
      type: 'button',
      'aria-label': 'Remove this requirement',
      onclick: () => {
        rows.splice(rows.indexOf(row), 1);
        row.element.remove();
        add.focus();
      },
    }, 'Remove'));
    rows.push(row);
    list.append(row.element);
    return row;
  };
  initial.forEach(makeRow);
  add.addEventListener('click', () => makeRow({}).name.input.focus());
  const setError = (part, message) => {
    part.error.hidden = !message;
    part.error.textContent = message ?? '';
    part.input.setAttribute('aria-invalid', message ? 'true' : 'false');
  };
  return {
    element: h('div', {}, h('p', { class: 'help' }, 'Policies of this namespace that must be active beside this one, at a label inside a semver range.'), list, add),
    read: () => rows.map((row) => ({ name: row.name.input.value.trim(), range: row.range.input.value.trim() })).filter((entry) => entry.name || entry.range),
    clearErrors: () => rows.forEach((row) => {
      setError(row.name, null);
      setError(row.range, null);
    }),
    // A refusal naming "requirements[i].name" or ".range": at its input.
    showError({ field, message }) {
      const match = /^requirements\[(\d+)\]\.(name|range)$/.exec(field ?? '');
      const filled = rows.filter((row) => row.name.input.value.trim() || row.range.input.value.trim());
      const row = match && filled[Number(match[1])];
      if (!row) return false;
      setError(row[match[2]], message);
      return true;
    },
  };
}
