// A form made from a policy's JSON Schema: a field per property, typed
// (numbers, text, choices of an enum, a checkbox), with its bounds as the
// input's attributes, its description as help text, required properties
// marked, nested objects as groups and arrays as lists of items one can add
// to and remove from. The server stays the judge: it validates at Publish,
// and its violations (JSON Pointers into the body) are shown at the field
// they name.

import { h } from './dom.js';

let serial = 0;

// The schema's type, the first of a list that is not "null".
function typeOf(schema) {
  const type = [schema.type].flat().find((entry) => entry && entry !== 'null');
  if (type) return type;
  if (schema.properties) return 'object';
  if (schema.items) return 'array';
  return undefined;
}

// Whether the form can draw `schema` (else the JSON editor is the way).
export function supports(schema) {
  if (!schema || typeof schema !== 'object') return false;
  if (['$ref', 'oneOf', 'anyOf', 'allOf', 'not', 'if', 'patternProperties'].some((key) => key in schema)) return false;
  if (Array.isArray(schema.enum)) return true;
  switch (typeOf(schema)) {
    case 'object': {
      // An object without named properties has no field to draw.
      const properties = Object.values(schema.properties ?? {});
      return properties.length > 0 && properties.every(supports);
    }
    case 'array':
      return !Array.isArray(schema.items) && supports(schema.items ?? {}) && typeOf(schema.items ?? {}) !== undefined;
    case 'string': case 'integer': case 'number': case 'boolean':
      return true;
    default:
      return false;
  }
}

// The form for `schema`, filled with `value`: { element, read(), showErrors(violations), clearErrors() }.
// `read()` gives the body; `showErrors` takes [{ pointer, message }] and
// returns those no field took.
export function schemaForm(schema, value) {
  const root = node(schema, value, { label: null, required: true });
  return {
    element: root.element,
    read: () => root.read() ?? {},
    clearErrors: () => walk(root, '', (field) => field.error?.(null)),
    showErrors(violations) {
      const fields = new Map();
      walk(root, '', (field, pointer) => fields.set(pointer, field));
      const left = [];
      for (const violation of violations) {
        const pointer = requiredPointer(violation) ?? violation.pointer;
        const field = fields.get(pointer);
        if (field?.error) field.error(violation.message);
        else left.push(violation);
      }
      return left;
    },
  };
}

// A missing required property is reported at its parent, naming it in the
// message ("\"budget\" is a required property"): its own field takes it.
function requiredPointer({ pointer, message }) {
  const missing = /^"([^"]+)" is a required property/.exec(message ?? '');
  return missing ? `${pointer === '/' ? '' : pointer}/${missing[1].replaceAll('~', '~0').replaceAll('/', '~1')}` : null;
}

function walk(field, pointer, visit) {
  visit(field, pointer);
  for (const [key, child] of field.children?.() ?? []) {
    walk(child, `${pointer}/${String(key).replaceAll('~', '~0').replaceAll('/', '~1')}`, visit);
  }
}

// The label, help and error of a field around `control`.
function decorate(schema, options, id, control, { group = false } = {}) {
  const help = schema.description ? h('p', { class: 'help', id: `${id}-help` }, schema.description) : null;
  const error = h('p', { class: 'field-error', id: `${id}-error`, hidden: true });
  const notes = [options.required && 'required', options.bounds].filter(Boolean);
  const title = notes.length ? `${options.label} (${notes.join(', ')})` : options.label;
  const described = [help && `${id}-help`, `${id}-error`].filter(Boolean).join(' ');
  const target = group ? null : control;
  if (target) target.setAttribute('aria-describedby', described);
  const element = group
    ? h('fieldset', { class: 'group', id, 'aria-describedby': described }, h('legend', {}, title), help, error, control)
    : h('div', { class: 'field' }, h('label', { for: id }, title), help, control, error);
  const showError = (message) => {
    error.hidden = !message;
    error.textContent = message ?? '';
    target?.setAttribute('aria-invalid', message ? 'true' : 'false');
    element.classList.toggle('invalid', Boolean(message));
  };
  return { element, showError };
}

function node(schema, value, options) {
  const id = `field-${(serial += 1)}`;
  if (Array.isArray(schema.enum)) return choice(schema, value, options, id);
  switch (typeOf(schema)) {
    case 'object': return object(schema, value, options, id);
    case 'array': return list(schema, value, options, id);
    case 'boolean': return checkbox(schema, value, options, id);
    case 'integer': case 'number': return number(schema, value, options, id);
    default: return text(schema, value, options, id);
  }
}

function object(schema, value, options, id) {
  const current = value && typeof value === 'object' && !Array.isArray(value) ? value : {};
  const required = new Set(schema.required ?? []);
  // Required properties first (the server keeps no order of its own).
  const entries = Object.entries(schema.properties ?? {});
  const ordered = [...entries.filter(([key]) => required.has(key)), ...entries.filter(([key]) => !required.has(key))];
  const members = ordered.map(([key, child]) => [key, node(child, current[key], {
    label: child.title ?? key,
    required: required.has(key),
  })]);
  const body = members.map(([, member]) => member.element);
  const decorated = options.label === null ? null : decorate(schema, options, id, h('div', { class: 'members' }, body), { group: true });
  const known = new Set(members.map(([key]) => key));
  return {
    element: decorated?.element ?? h('div', { class: 'members', id }, body),
    error: decorated?.showError,
    children: () => members,
    read() {
      // Properties the schema does not name are kept as they were.
      const result = Object.fromEntries(Object.entries(current).filter(([key]) => !known.has(key)));
      for (const [key, member] of members) {
        const read = member.read();
        if (read !== undefined) result[key] = read;
      }
      const empty = Object.keys(result).length === 0;
      return empty && !options.required && !value ? undefined : result;
    },
  };
}

function list(schema, value, options, id) {
  const itemSchema = schema.items ?? {};
  const items = [];
  const holder = h('ol', { class: 'items' });
  const add = h('button', { type: 'button', class: 'add-item' }, `Add to ${options.label ?? 'the list'}`);
  const draw = () => {
    holder.replaceChildren(...items.map((item, index) => {
      const remove = h('button', {
        type: 'button',
        class: 'remove-item',
        'aria-label': `Remove item ${index + 1} of ${options.label}`,
        onclick: () => {
          items.splice(index, 1);
          draw();
          (holder.querySelectorAll('input, select, textarea')[0] ?? add).focus();
        },
      }, 'Remove');
      return h('li', {}, item.element, remove);
    }));
  };
  const make = (entry, index) => node(itemSchema, entry, { label: `${itemSchema.title ?? options.label} item ${index + 1}`, required: true });
  (Array.isArray(value) ? value : []).forEach((entry, index) => items.push(make(entry, index)));
  add.addEventListener('click', () => {
    items.push(make(undefined, items.length));
    draw();
    const fresh = holder.lastElementChild?.querySelector('input, select, textarea');
    fresh?.focus();
  });
  draw();
  const decorated = decorate(schema, options, id, h('div', {}, holder, add), { group: true });
  return {
    element: decorated.element,
    error: decorated.showError,
    children: () => items.map((item, index) => [index, item]),
    read() {
      const result = items.map((item) => item.read()).filter((entry) => entry !== undefined);
      return result.length || options.required || Array.isArray(value) ? result : undefined;
    },
  };
}

function choice(schema, value, options, id) {
  const encoded = schema.enum.map((entry) => JSON.stringify(entry));
  const chosen = value === undefined ? (options.required ? null : '') : JSON.stringify(value);
  const select = h('select', { id, name: id, 'aria-required': options.required ? 'true' : null },
    options.required && chosen !== null ? null : h('option', { value: '' }, options.required ? 'choose…' : '(not set)'),
    schema.enum.map((entry, index) => h('option', { value: encoded[index], selected: encoded[index] === chosen }, typeof entry === 'string' ? entry : encoded[index])));
  const { element, showError } = decorate(schema, options, id, select);
  return { element, error: showError, read: () => (select.value === '' ? undefined : JSON.parse(select.value)) };
}

function checkbox(schema, value, options, id) {
  const input = h('input', { id, name: id, type: 'checkbox', checked: value === true || (value === undefined && schema.default === true) });
  const { element, showError } = decorate(schema, options, id, input);
  element.classList.add('check');
  return { element, error: showError, read: () => input.checked };
}

function number(schema, value, options, id) {
  const integer = typeOf(schema) === 'integer';
  const input = h('input', {
    id,
    name: id,
    type: 'number',
    inputmode: integer ? 'numeric' : 'decimal',
    step: integer ? '1' : 'any',
    min: schema.minimum ?? schema.exclusiveMinimum,
    max: schema.maximum ?? schema.exclusiveMaximum,
    value: typeof value === 'number' ? String(value) : null,
    'aria-required': options.required ? 'true' : null,
  });
  const { element, showError } = decorate(schema, withBounds(schema, options), id, input);
  return { element, error: showError, read: () => (input.value === '' ? undefined : Number(input.value)) };
}

function text(schema, value, options, id) {
  const input = h('input', {
    id,
    name: id,
    type: 'text',
    autocomplete: 'off',
    minlength: schema.minLength,
    maxlength: schema.maxLength,
    pattern: inputPattern(schema.pattern),
    value: value === undefined || value === null ? null : String(value),
    'aria-required': options.required ? 'true' : null,
  });
  const { element, showError } = decorate(schema, options, id, input);
  return { element, error: showError, read: () => (input.value === '' && !options.required ? undefined : input.value) };
}

// The input's pattern attribute for a schema's pattern. The two differ:
// a schema's pattern matches anywhere in the value, the attribute matches
// the whole value, and browsers compile the attribute with the v flag,
// which refuses what other regular expressions accept (a "-" last in a
// class). A pattern the v flag cannot read gets no attribute, and the
// server, which judges at Publish, says what is wrong.
function inputPattern(pattern) {
  if (typeof pattern !== 'string') return undefined;
  const anywhere = `[\\s\\S]*(?:${pattern})[\\s\\S]*`;
  try {
    new RegExp(pattern, 'v');
    new RegExp(`^(?:${anywhere})$`, 'v');
    return anywhere;
  } catch {
    return undefined;
  }
}

// "Token budget (required, 1 to 100000)": the bounds in the label, where
// every reader meets them.
function withBounds(schema, options) {
  const low = schema.minimum ?? (schema.exclusiveMinimum !== undefined ? `more than ${schema.exclusiveMinimum}` : undefined);
  const high = schema.maximum ?? (schema.exclusiveMaximum !== undefined ? `less than ${schema.exclusiveMaximum}` : undefined);
  let bounds = '';
  if (low !== undefined && high !== undefined) bounds = `${low} to ${high}`;
  else if (low !== undefined) bounds = `at least ${low}`;
  else if (high !== undefined) bounds = `at most ${high}`;
  return bounds ? { ...options, bounds } : options;
}
