// Every action goes through one dialog that says exactly what it will do,
// asks for what it needs (a reason, a label), and only then calls the API.

import { h } from './dom.js';

// Opens the dialog; resolves to true once `run(values)` succeeded, false when
// cancelled. A refusal is shown in the dialog, which stays open.
export function confirmAction({ title, summary, fields = [], confirmLabel, danger = false, run }) {
  return new Promise((resolve) => {
    const inputs = fields.map((field) => {
      const id = `field-${field.name}`;
      const input = h(field.multiline ? 'textarea' : 'input', {
        id,
        name: field.name,
        'aria-required': field.required ? 'true' : null,
        placeholder: field.placeholder,
        autocomplete: 'off',
      });
      return { field, input, element: h('div', {}, h('label', { for: id }, field.label + (field.required ? ' (required)' : '')), input) };
    });
    const error = h('p', { class: 'error', role: 'alert' });
    const confirm = h('button', { type: 'submit', class: danger ? 'danger' : 'primary' }, confirmLabel);
    const cancel = h('button', { type: 'button' }, 'Cancel');
    const form = h(
      'form',
      { method: 'dialog' },
      h('h2', { id: 'dialog-title' }, title),
      h('div', { id: 'dialog-summary' }, summary.map((line) => h('p', {}, line))),
      inputs.map(({ element }) => element),
      error,
      h('div', { class: 'actions' }, confirm, cancel),
    );
    const dialog = h('dialog', { 'aria-labelledby': 'dialog-title', 'aria-describedby': 'dialog-summary' }, form);
    const close = (done) => {
      dialog.close();
      dialog.remove();
      resolve(done);
    };
    cancel.addEventListener('click', () => close(false));
    dialog.addEventListener('cancel', (event) => {
      event.preventDefault();
      close(false);
    });
    form.addEventListener('submit', async (event) => {
      event.preventDefault();
      const values = Object.fromEntries(inputs.map(({ field, input }) => [field.name, input.value.trim()]));
      const missing = inputs.find(({ field }) => field.required && !values[field.name]);
      if (missing) {
        error.textContent = `${missing.field.label} is required.`;
        missing.input.focus();
        return;
      }
      confirm.disabled = true;
      error.textContent = '';
      try {
        await run(values);
        close(true);
      } catch (refusal) {
        error.textContent = refusal.message;
        confirm.disabled = false;
      }
    });
    document.body.append(dialog);
    dialog.showModal();
    (inputs[0]?.input ?? confirm).focus();
  });
}
