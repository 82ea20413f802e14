// Keeping a page on the server's state: the SSE watch of the namespace's
// active versions (a change made anywhere reaches the page within the
// server's push), and for what the watch does not carry (runtimes' reports,
// drafts, events) a refresh every few seconds. While the page cannot follow
// (the stream broke, a refresh failed) a notice above it says since when
// its data may be old; it goes once the page is current again.

import { watchActive } from './api.js';
import { h } from './dom.js';

const RETRY_MS = [1000, 2000, 5000, 10000];

// Follows `namespace` (only `names` when given; none: no watch) and calls
// `onChange()` (a promise) after each change the watch brings and every
// `every` ms. Returns the function that stops it.
export function follow({ namespace, names = [], every = 0, watch = Boolean(namespace), onChange }) {
  const controller = new AbortController();
  let stopped = false;
  let since = 0;
  let failures = 0;
  let timer = null;
  const problems = new Map();
  const setProblem = (source, failure) => {
    if (stopped) return;
    if (failure) {
      if (!problems.has(source)) problems.set(source, { at: new Date(), message: failure.message });
    } else {
      problems.delete(source);
    }
    stale(problems);
  };
  const refresh = async (source) => {
    try {
      await onChange();
      setProblem(source, null);
    } catch (failure) {
      setProblem(source, failure);
    }
  };

  const stream = async () => {
    while (!stopped) {
      try {
        const response = await watchActive(namespace, { names, sinceRevision: since, signal: controller.signal });
        const resumed = since > 0;
        let first = true;
        for await (const event of events(response.body)) {
          if (event.id) since = Number(event.id);
          if (event.type === 'error') throw new Error(JSON.parse(event.data).message ?? 'the watch ended');
          if (event.type !== 'snapshot' && event.type !== 'update') continue;
          failures = 0;
          setProblem('watch', null);
          // The first message of a stream is the state it starts from: a
          // change only when the stream resumed after a break.
          if (!first || resumed) await refresh('watch');
          first = false;
        }
        throw new Error('the server ended the stream');
      } catch (failure) {
        if (stopped) return;
        setProblem('watch', failure);
        await new Promise((resolve) => setTimeout(resolve, RETRY_MS[Math.min(failures, RETRY_MS.length - 1)]));
        failures += 1;
      }
    }
  };
  if (watch) stream();
  const tick = async () => {
    await refresh('refresh');
    if (!stopped) timer = setTimeout(tick, every);
  };
  if (every) timer = setTimeout(tick, every);
  return () => {
    stopped = true;
    controller.abort();
    clearTimeout(timer);
    stale(new Map());
  };
}

// The events of an SSE body: { type, id, data }.
async function* events(body) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = '';
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value.replaceAll('\r\n', '\n');
    let end;
    while ((end = buffer.indexOf('\n\n')) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const event = { type: 'message', id: '', data: '' };
      for (const line of block.split('\n')) {
        if (!line || line.startsWith(':')) continue;
        const colon = line.indexOf(':');
        const field = colon < 0 ? line : line.slice(0, colon);
        const text = colon < 0 ? '' : line.slice(colon + 1).replace(/^ /, '');
        if (field === 'event') event.type = text;
        else if (field === 'id') event.id = text;
        else if (field === 'data') event.data += (event.data ? '\n' : '') + text;
      }
      if (event.data || event.id) yield event;
    }
  }
}

// The notice that the page may show older data, or none.
function stale(problems) {
  const place = document.getElementById('live');
  if (!problems.size) {
    place.replaceChildren();
    return;
  }
  const since = new Date(Math.min(...[...problems.values()].map((problem) => problem.at.getTime())));
  const reason = [...problems.values()][0].message;
  place.replaceChildren(h('p', { class: 'stale', id: 'stale' },
    h('strong', {}, 'Not live: '),
    `this page lost its connection to the server at ${since.toISOString().slice(11, 19)}Z (${reason}) and may show older data. Reconnecting…`));
}
