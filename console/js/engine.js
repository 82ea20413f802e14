// What a runtime runs, from its `engine` label: an Open Policy Agent that
// fetches its namespace's bundle is registered with `engine=opa`, and is
// marked as such beside its id wherever a runtime is listed.

import { h } from './dom.js';

export const isOpa = (runtime) => runtime.labels?.engine === 'opa';

// A runtime's id, with an "OPA" marker when it is one.
export function runtimeName(runtime) {
  return h(
    'span',
    { class: 'runtime-name' },
    runtime.id,
    isOpa(runtime) ? [' ', h('abbr', { class: 'engine opa', title: 'Open Policy Agent' }, 'OPA')] : null,
  );
}
