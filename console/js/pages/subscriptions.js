// Webhook subscriptions: those of a namespace (the operator role) or of the
// whole deployment (the admin grant), their state and failures; creating
// one shows its signing secret this once. A subscription's page changes
// it, enables or disables it, sends a test and lists its recent
// deliveries. Only what the caller may call is offered.

import { ApiError, allowed, get, patch, paths, post, remove, whoami } from '../api.js';
import { confirmAction } from '../confirm.js';
import { announce, cells, facts, h, link, route, stateName, table, time } from '../dom.js';
import { eventKinds } from './events.js';
import { namespaceCrumbs, namespaceTabs } from './home.js';
import { follow } from '../live.js';

const FORMATS = [
  ['SUBSCRIPTION_FORMAT_CLOUDEVENTS', 'CloudEvents 1.0 JSON'],
  ['SUBSCRIPTION_FORMAT_CHAT', 'Chat message ({"text": …}, Slack-compatible)'],
];

const METHODS = ['CreateSubscription', 'ListSubscriptions', 'UpdateSubscription', 'DeleteSubscription', 'TestSubscription', 'ListDeliveries'];

// What the caller may do with the subscriptions of `namespace`; for the
// deployment-wide ones (empty namespace), the admin grant allows all of it.
async function permitted(namespace) {
  if (namespace) return allowed(namespace);
  const me = await whoami();
  return new Set((me.grants ?? []).includes('*:admin') ? METHODS : []);
}

function heading(namespace) {
  return namespace ? `Subscriptions of ${namespace}` : 'Deployment-wide subscriptions';
}

function listRoute(namespace) {
  return namespace ? route('namespaces', namespace, 'subscriptions') : route('subscriptions');
}

function subscriptionRoute(namespace, name) {
  return namespace ? route('namespaces', namespace, 'subscriptions', name) : route('subscriptions', name);
}

function listCrumbs(namespace, ...last) {
  return namespace
    ? namespaceCrumbs(namespace, ['Subscriptions', listRoute(namespace)], ...last)
    : [['Namespaces', route()], ['Deployment-wide subscriptions', listRoute('')], ...last.map((entry) => [entry].flat())];
}

function kindName(kind) {
  return stateName(kind, 'EVENT_KIND_');
}

function formatName(format) {
  return format === 'SUBSCRIPTION_FORMAT_CHAT' ? 'chat' : 'CloudEvents';
}

function subscriptionState(subscription) {
  return subscription.enabled
    ? h('span', { class: 'state enabled' }, 'enabled')
    : h('span', { class: 'state disabled' }, 'disabled', subscription.disabledReason ? `: ${subscription.disabledReason}` : '');
}

export async function subscriptions(view, [namespace], _query, { crumbs }) {
  crumbs(listCrumbs(namespace));
  document.title = `${heading(namespace)} · policyhub`;
  const may = await permitted(namespace);
  const me = await whoami();
  view.append(h('h1', {}, heading(namespace)), namespace ? namespaceTabs(namespace, 'Subscriptions') : '');
  if (!may.has('ListSubscriptions')) {
    view.append(h('p', {}, namespace
      ? 'Subscriptions are managed by the operator role of this namespace, which you do not hold.'
      : 'Deployment-wide subscriptions are managed with the *:admin grant, which you do not hold.'));
    return;
  }
  const read = () => get(paths.subscriptions(namespace)).then((reply) => reply.subscriptions ?? []);
  const listing = h('div', { id: 'subscriptions' });
  const draw = (list) => listing.replaceChildren(list.length
    ? subscriptionTable(namespace, list)
    : h('p', {}, 'No subscription yet.'));
  draw(await read());
  view.append(
    namespace && (me.grants ?? []).includes('*:admin')
      ? h('p', {}, link(listRoute(''), 'Deployment-wide subscriptions'), ' hear every namespace.')
      : '',
    listing,
    may.has('CreateSubscription') ? createForm(namespace, await eventKinds(), async () => draw(await read())) : '',
  );
  // Failures and automatic disabling happen as deliveries go: read again
  // every few seconds.
  return follow({ every: 10000, watch: false, onChange: async () => draw(await read()) });
}

function subscriptionTable(namespace, list) {
  const headings = ['Subscription', 'Endpoint', 'Event kinds', 'Format', 'State', 'Failures in a row'];
  return table(headings, list.map((subscription) => h(
    'tr',
    { 'data-subscription': subscription.name },
    cells(headings, [
      link(subscriptionRoute(namespace, subscription.name), subscription.name),
      h('code', {}, subscription.url),
      (subscription.eventKinds ?? []).map(kindName).join(', '),
      formatName(subscription.format),
      subscriptionState(subscription),
      String(subscription.consecutiveFailures ?? 0),
    ]),
  )), heading(namespace), { stack: true });
}

// The event kinds `all` as checkboxes, those of `chosen` checked.
function kindChoices(all, chosen) {
  return h(
    'fieldset',
    { class: 'kinds' },
    h('legend', {}, 'Event kinds (at least one)'),
    all.map((kind) => {
      const id = `kind-${kind}`;
      return h('span', { class: 'kind' },
        h('input', { type: 'checkbox', id, name: 'eventKinds', value: kind, checked: chosen.includes(kind) }),
        h('label', { for: id }, kindName(kind)));
    }),
  );
}

function formatChoices(chosen) {
  return h(
    'fieldset',
    {},
    h('legend', {}, 'Format'),
    FORMATS.map(([format, text]) => {
      const id = `format-${format}`;
      return h('div', {},
        h('input', { type: 'radio', id, name: 'format', value: format, checked: format === chosen }),
        ' ', h('label', { for: id }, text));
    }),
  );
}

function chosenKinds(form) {
  return [...form.querySelectorAll('input[name=eventKinds]:checked')].map((input) => input.value);
}

// A refusal's named fields, or its message.
function refusalText(refusal) {
  const named = refusal instanceof ApiError ? refusal.violations().filter((violation) => violation.field) : [];
  return named.length ? named.map((violation) => `${violation.field}: ${violation.message}`).join('; ') : refusal.message;
}

function createForm(namespace, kinds, refresh) {
  const name = h('input', { id: 'subscription-name', name: 'name', required: true, autocomplete: 'off', spellcheck: 'false' });
  const url = h('input', { id: 'subscription-url', name: 'url', type: 'url', size: 60, required: true, autocomplete: 'off', placeholder: 'https://hooks.example.com/policyhub' });
  const error = h('p', { class: 'error', role: 'alert', id: 'subscription-error' });
  const secret = h('div', { id: 'subscription-secret-shown' });
  const form = h(
    'form',
    { id: 'new-subscription', 'aria-labelledby': 'new-subscription-title' },
    h('h2', { id: 'new-subscription-title' }, 'New subscription'),
    h('div', {}, h('label', { for: 'subscription-name' }, 'Name (required)'), name),
    h('div', {}, h('label', { for: 'subscription-url' }, 'Endpoint URL (required)'), url),
    kindChoices(kinds, []),
    formatChoices('SUBSCRIPTION_FORMAT_CLOUDEVENTS'),
    error,
    h('div', { class: 'actions' }, h('button', { type: 'submit', class: 'primary' }, 'Create subscription')),
  );
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    error.textContent = '';
    const eventKinds = chosenKinds(form);
    if (!eventKinds.length) {
      error.textContent = 'Choose at least one event kind.';
      form.querySelector('input[name=eventKinds]').focus();
      return;
    }
    try {
      const created = await post(paths.subscriptions(namespace), {
        name: name.value.trim(),
        url: url.value.trim(),
        eventKinds,
        format: form.querySelector('input[name=format]:checked').value,
      });
      secret.replaceChildren(secretPanel(namespace, created));
      form.reset();
      announce(`Subscription ${created.subscription.name} created`);
      secret.querySelector('#subscription-secret').focus();
      await refresh();
    } catch (refusal) {
      error.textContent = refusalText(refusal);
    }
  });
  return h('div', {}, secret, form);
}

// The secret of a subscription just created: shown this once, with a
// button that copies it.
function secretPanel(namespace, created) {
  const value = h('input', { id: 'subscription-secret', type: 'text', readonly: true, value: created.secret, size: 60, spellcheck: 'false' });
  const copied = h('span', { role: 'status', id: 'secret-copied' });
  const copy = h('button', {
    type: 'button',
    id: 'copy-secret',
    onclick: async () => {
      try {
        await navigator.clipboard.writeText(created.secret);
        copied.textContent = 'Copied.';
      } catch {
        value.select();
        copied.textContent = 'Select the secret and copy it.';
      }
    },
  }, 'Copy secret');
  return h(
    'section',
    { class: 'secret', 'aria-labelledby': 'secret-title' },
    h('h2', { id: 'secret-title' }, `Signing secret of ${created.subscription.name}`),
    h('p', {}, 'Keep it now: it is shown this once and never again. Receivers verify each delivery\'s signature with it.'),
    h('label', { for: 'subscription-secret' }, 'Secret'),
    value,
    ' ', copy, ' ', copied,
    h('p', {}, link(subscriptionRoute(namespace, created.subscription.name), `Open ${created.subscription.name}`)),
  );
}

export async function subscription(view, [namespace, name], _query, { crumbs, rerender }) {
  crumbs(listCrumbs(namespace, name));
  document.title = `${name} · ${heading(namespace)} · policyhub`;
  const may = await permitted(namespace);
  const path = paths.subscription(namespace, name);
  const found = await get(path);
  const deliveries = h('div', { id: 'deliveries' });
  const drawDeliveries = async () => {
    const list = (await get(`${path}/deliveries`)).deliveries ?? [];
    deliveries.replaceChildren(list.length ? deliveryTable(list) : h('p', {}, 'No delivery yet.'));
  };
  if (may.has('ListDeliveries')) await drawDeliveries();
  view.append(
    h('h1', {}, `Subscription ${name}`),
    facts([
      ['Endpoint', h('code', {}, found.url)],
      ['Event kinds', h('span', { id: 'subscription-kinds' }, (found.eventKinds ?? []).map(kindName).join(', '))],
      ['Format', formatName(found.format)],
      ['State', h('span', { id: 'subscription-state' }, subscriptionState(found))],
      ['Failures in a row', String(found.consecutiveFailures ?? 0)],
      ['Delivered through event', String(found.deliveredThrough ?? 0)],
      ['Created', time(found.createdAt)],
      ['Updated', time(found.updatedAt)],
    ]),
    h('div', { id: 'actions', class: 'actions' }, actions(namespace, found, may, rerender, drawDeliveries)),
    h('p', { id: 'test-result', role: 'status' }),
    may.has('UpdateSubscription') ? editForm(path, found, await eventKinds(), rerender) : '',
    may.has('ListDeliveries') ? h('section', { 'aria-labelledby': 'deliveries-title' }, h('h2', { id: 'deliveries-title' }, 'Recent deliveries'), deliveries) : '',
  );
  return may.has('ListDeliveries') ? follow({ every: 3000, watch: false, onChange: drawDeliveries }) : undefined;
}

function actions(namespace, found, may, rerender, drawDeliveries) {
  const path = paths.subscription(namespace, found.name);
  return [
    may.has('TestSubscription') ? h('button', {
      type: 'button',
      id: 'send-test',
      onclick: async (event) => {
        const button = event.currentTarget;
        const result = document.getElementById('test-result');
        button.disabled = true;
        result.textContent = 'Sending a test message…';
        try {
          const delivery = await post(`${path}:test`);
          result.textContent = delivery.outcome === 'DELIVERY_OUTCOME_DELIVERED'
            ? `Test delivered: HTTP ${delivery.statusCode} in ${delivery.latencyMs ?? 0} ms.`
            : `Test failed: ${delivery.error || `HTTP ${delivery.statusCode ?? 0}`}.`;
          await drawDeliveries();
        } catch (refusal) {
          result.textContent = `Test refused: ${refusal.message}`;
        } finally {
          button.disabled = false;
        }
      },
    }, 'Send a test') : '',
    may.has('UpdateSubscription') ? h('button', {
      type: 'button',
      onclick: () => confirmAction({
        title: `${found.enabled ? 'Disable' : 'Enable'} subscription ${found.name}`,
        summary: [found.enabled
          ? `Disable ${found.name}: nothing is delivered to it until it is enabled again; it keeps its place in the event log.`
          : `Enable ${found.name}: it delivers again from the first event it has not delivered (event ${(Number(found.deliveredThrough ?? 0) + 1)}).`],
        confirmLabel: found.enabled ? 'Disable' : 'Enable',
        run: async () => {
          await patch(path, { enabled: !found.enabled });
          announce(`${found.name} ${found.enabled ? 'disabled' : 'enabled'}`);
          rerender();
        },
      }),
    }, found.enabled ? 'Disable…' : 'Enable…') : '',
    may.has('DeleteSubscription') ? h('button', {
      type: 'button',
      class: 'danger',
      onclick: () => confirmAction({
        title: `Delete subscription ${found.name}`,
        summary: [`Delete ${found.name} and its undelivered queue. Its endpoint hears nothing more; this cannot be undone.`],
        confirmLabel: 'Delete',
        danger: true,
        run: async () => {
          await remove(path);
          announce(`${found.name} deleted`);
          window.location.hash = listRoute(namespace);
        },
      }),
    }, 'Delete…') : '',
  ];
}

function editForm(path, found, kinds, rerender) {
  const url = h('input', { id: 'edit-url', name: 'url', type: 'url', size: 60, required: true, autocomplete: 'off', value: found.url });
  const error = h('p', { class: 'error', role: 'alert' });
  const form = h(
    'form',
    { id: 'edit-subscription', 'aria-labelledby': 'edit-subscription-title' },
    h('h2', { id: 'edit-subscription-title' }, 'Change'),
    h('div', {}, h('label', { for: 'edit-url' }, 'Endpoint URL'), url),
    kindChoices(kinds, found.eventKinds ?? []),
    formatChoices(found.format === 'SUBSCRIPTION_FORMAT_CHAT' ? found.format : 'SUBSCRIPTION_FORMAT_CLOUDEVENTS'),
    error,
    h('div', { class: 'actions' }, h('button', { type: 'submit', class: 'primary' }, 'Save changes')),
  );
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    const eventKinds = chosenKinds(form);
    if (!eventKinds.length) {
      error.textContent = 'Choose at least one event kind.';
      form.querySelector('input[name=eventKinds]').focus();
      return;
    }
    try {
      await patch(path, { url: url.value.trim(), eventKinds, format: form.querySelector('input[name=format]:checked').value });
      announce('Subscription saved');
      rerender();
    } catch (refusal) {
      error.textContent = refusalText(refusal);
    }
  });
  return form;
}

function deliveryTable(list) {
  const headings = ['At', 'Event', 'Attempt', 'Outcome', 'Status code', 'Latency', 'Error'];
  return table(headings, list.map((delivery) => h(
    'tr',
    { 'data-event': String(delivery.eventId ?? 0) },
    cells(headings, [
      time(delivery.at),
      Number(delivery.eventId ?? 0) ? String(delivery.eventId) : 'test',
      String(delivery.attempt ?? 1),
      h('span', { class: `state ${stateName(delivery.outcome, 'DELIVERY_OUTCOME_')}` }, stateName(delivery.outcome, 'DELIVERY_OUTCOME_')),
      delivery.statusCode ? String(delivery.statusCode) : '—',
      `${delivery.latencyMs ?? 0} ms`,
      delivery.error ?? '',
    ]),
  )), 'Recent deliveries', { stack: true });
}
