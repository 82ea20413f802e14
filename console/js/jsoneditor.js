// A JSON editor: a text area that says, as one types, where the text stops
// being JSON (line, column, what was expected), with a button that puts
// the cursor there.

import { h, prettyJson } from './dom.js';
import { syntaxError } from './jsonsyntax.js';

// { element, read(), showErrors(violations), clearErrors() }: `read()`
// throws when the text is not a JSON object. Violations (JSON Pointers)
// are listed under the text, each named by its pointer.
export function jsonEditor(id, label, value) {
  const area = h('textarea', {
    id,
    name: id,
    class: 'json',
    rows: 16,
    spellcheck: 'false',
    autocomplete: 'off',
    autocapitalize: 'off',
    'aria-describedby': `${id}-status ${id}-errors`,
  });
  area.value = prettyJson(value ?? {});
  const status = h('p', { id: `${id}-status`, class: 'json-status', 'aria-live': 'polite' });
  const errors = h('ul', { id: `${id}-errors`, class: 'field-error' });
  const check = () => {
    const error = syntaxError(area.value);
    area.setAttribute('aria-invalid', error ? 'true' : 'false');
    if (!error) {
      status.className = 'json-status';
      status.replaceChildren('Valid JSON.');
      return null;
    }
    const offset = area.value.split('\n').slice(0, error.line - 1).reduce((sum, line) => sum + line.length + 1, 0) + error.column - 1;
    status.className = 'json-status error';
    status.replaceChildren(
      h('span', { class: 'json-position' }, `Line ${error.line}, column ${error.column}`),
      `: ${error.message}. `,
      h('button', {
        type: 'button',
        onclick: () => {
          area.focus();
          area.setSelectionRange(offset, Math.min(offset + 1, area.value.length));
        },
      }, 'Go to the error'),
    );
    return error;
  };
  let pending = null;
  area.addEventListener('input', () => {
    clearTimeout(pending);
    pending = setTimeout(check, 150);
  });
  check();
  return {
    element: h('div', { class: 'field' }, h('label', { for: id }, label), area, status, errors),
    read() {
      const error = check();
      if (error) throw new Error(`The body is not JSON: line ${error.line}, column ${error.column}: ${error.message}.`);
      const parsed = JSON.parse(area.value);
      if (!parsed || typeof parsed !== 'object' || Array.isArray(parsed)) throw new Error('The body must be a JSON object.');
      return parsed;
    },
    clearErrors: () => errors.replaceChildren(),
    showErrors(violations) {
      errors.replaceChildren(...violations.map((violation) => h('li', {}, h('code', {}, violation.pointer || '/'), `: ${violation.message}`)));
      return [];
    },
  };
}
