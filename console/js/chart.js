// A small chart of an analysis's measurements: each value as a point on a
// line, oldest on the left, against the bound its success condition sets,
// each outcome marked by a shape as well as a colour, the steps it spans
// told apart. Inline SVG built with DOM calls, every string set as text or
// an attribute, never as markup; colours come from console.css.

import { h, stateName } from './dom.js';

const SVG = 'http://www.w3.org/2000/svg';

// An SVG element, as dom.js's h() makes an HTML one.
export function svg(tag, attributes = {}, ...children) {
  const element = document.createElementNS(SVG, tag);
  for (const [key, value] of Object.entries(attributes)) {
    if (value !== undefined && value !== null && value !== false) element.setAttribute(key, String(value));
  }
  for (const child of children.flat(Infinity)) {
    if (child !== undefined && child !== null && child !== false) element.append(child instanceof Node ? child : String(child));
  }
  return element;
}

// The phases the console knows, in words as the condition is judged. Any
// other (one the server added since) is named after its value and drawn
// as a neutral mark: `MEASUREMENT_PHASE_ERROR` is "error".
const KNOWN = {
  MEASUREMENT_PHASE_SUCCESSFUL: 'passed',
  MEASUREMENT_PHASE_FAILED: 'failed',
  MEASUREMENT_PHASE_INCONCLUSIVE: 'inconclusive',
};

// { name, kind }: the phase in words, and the class of its mark and colour
// (`passed`, `failed`, `inconclusive`, or `other`).
export function phaseOf(measurement) {
  const phase = measurement.phase;
  if (KNOWN[phase]) return { name: KNOWN[phase], kind: KNOWN[phase] };
  const name = typeof phase === 'string' ? stateName(phase, 'MEASUREMENT_PHASE_') : '';
  return { name: name || (phase === undefined ? 'unknown' : `phase ${phase}`), kind: 'other' };
}

// The measurement's value when it is a finite number (the JSON mapping
// writes NaN and the infinities as strings), else null.
export function valueOf(measurement) {
  if (measurement.value === undefined || measurement.value === null) return null;
  const value = Number(measurement.value);
  return Number.isFinite(value) ? value : null;
}

// "3 passed, 1 failed": the count of each phase among `measurements`, the
// known ones first.
export function tally(measurements) {
  const counts = new Map(Object.values(KNOWN).map((name) => [name, 0]));
  for (const measurement of measurements) {
    const { name } = phaseOf(measurement);
    counts.set(name, (counts.get(name) ?? 0) + 1);
  }
  return [...counts].filter(([, count]) => count).map(([name, count]) => `${count} ${name}`).join(', ');
}

const NUMBER = String.raw`[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?`;
const OPERATOR = '<=|>=|==|!=|<|>';
const COMPARISON = new RegExp(String.raw`\bresult\s*(${OPERATOR})\s*(${NUMBER})|(${NUMBER})\s*(${OPERATOR})\s*result\b`, 'g');
const MIRROR = { '<': '>', '>': '<', '<=': '>=', '>=': '<=', '==': '==', '!=': '!=' };
const ALONE = new RegExp(String.raw`^\s*(?:result\s*(?:${OPERATOR})\s*${NUMBER}|${NUMBER}\s*(?:${OPERATOR})\s*result)\s*$`);

// The bounds a condition sets: each comparison of `result` with a number,
// as { value, operator, text } with `result` on the left ("0 <= result" is
// "result >= 0"). When the condition is one comparison by order, `fails`
// is the side of its line that fails, 'above' or 'below'; else null.
export function bounds(condition) {
  const found = [...String(condition ?? '').matchAll(COMPARISON)].map((match) => {
    const operator = match[1] ?? MIRROR[match[4]];
    const value = Number(match[2] ?? match[3]);
    return { value, operator, text: `result ${operator} ${match[2] ?? match[3]}` };
  }).filter((bound) => Number.isFinite(bound.value));
  let fails = null;
  if (found.length === 1 && ALONE.test(String(condition))) {
    fails = { '<': 'above', '<=': 'above', '>': 'below', '>=': 'below' }[found[0].operator] ?? null;
  }
  return { bounds: found, fails };
}

// A number as a label: three significant digits, no trailing zeros.
export function figure(value) {
  return String(Number(value.toPrecision(3)));
}

// Ticks for [low, high]: about three, on a round step (1, 2 or 5 × 10^n).
function ticks(low, high) {
  const rough = (high - low) / 3;
  const magnitude = 10 ** Math.floor(Math.log10(rough));
  const step = [1, 2, 5, 10].map((factor) => factor * magnitude).find((each) => each >= rough);
  const first = Math.floor(low / step) * step;
  const last = Math.ceil(high / step) * step;
  const all = [];
  for (let tick = first; tick <= last + step / 2; tick += step) all.push(Number(tick.toPrecision(12)));
  return all;
}

// The geometry, in the viewBox's units; CSS scales the whole to the width
// it has.
const WIDTH = 560;
const LEFT = 60;
const GAP = 12;
// The width of a character of the labels, about, and the characters the
// margin for the names of the bounds holds at least ("result >= 0.95").
const CHARACTER = 6.4;
const NAMED = 14;
const TOP = 10;
const BOTTOM_OF_VALUES = 118;
const NO_VALUE = 138;
const STEPS = 162;
const HEIGHT = 172;

// The shape of a mark of `kind` centred on (x, y), `size` its half-width:
// a disc when passed, a diamond when failed, a ring when inconclusive, a
// square otherwise.
export function mark(kind, x, y, size, attributes = {}, ...children) {
  const common = { class: `mark ${kind}`, ...attributes };
  if (kind === 'passed') return svg('circle', { cx: x, cy: y, r: size, ...common }, children);
  if (kind === 'inconclusive') return svg('circle', { cx: x, cy: y, r: size * 0.85, ...common }, children);
  if (kind === 'failed') {
    const d = size * 1.3;
    return svg('path', { d: `M${x} ${y - d}L${x + d} ${y}L${x} ${y + d}L${x - d} ${y}Z`, ...common }, children);
  }
  return svg('rect', { x: x - size * 0.9, y: y - size * 0.9, width: size * 1.8, height: size * 1.8, ...common }, children);
}

const plural = (count, word) => `${count} ${word}${count === 1 ? '' : 's'}`;

function listed(items) {
  return items.length < 2 ? items.join('') : `${items.slice(0, -1).join(', ')} and ${items.at(-1)}`;
}

// What the chart shows, in words: its aria-label.
function described(name, measurements, condition, values, label) {
  const steps = [...new Set(measurements.map((measurement) => (measurement.step ?? 0) + 1))];
  const last = measurements.at(-1);
  const lastValue = valueOf(last);
  const [least, most] = [Math.min(...values), Math.max(...values)];
  let range = 'no value measured';
  if (values.length === 1) range = `one value, ${figure(least)}`;
  else if (values.length && least === most) range = `every value ${figure(least)}`;
  else if (values.length) range = `values from ${figure(least)} to ${figure(most)}`;
  return `${name}: ${plural(measurements.length, 'measurement')} in ${steps.length === 1 ? 'step' : 'steps'} ${listed(steps.map(String))}, `
    + `judged by ${condition || 'no condition'}: ${tally(measurements)}; ${range}; `
    + `the last, at ${label(last)}: ${lastValue === null ? 'no value' : figure(lastValue)}, ${phaseOf(last).name}.`;
}

// The chart of `measurements` (oldest first) of the analysis `name`,
// judged by `condition`. `stepLabel(index)` names a step (from 0);
// `label(measurement)` says when one was taken.
export function measurementChart({ name, measurements, condition, stepLabel, label }) {
  const values = measurements.map(valueOf).filter((value) => value !== null);
  const { bounds: lines, fails } = bounds(condition);
  // The range: the values and the bounds, from zero when none is negative,
  // out to round ticks.
  const all = [...values, ...lines.map((line) => line.value)];
  let low = all.length ? Math.min(...all) : 0;
  let high = all.length ? Math.max(...all) : 1;
  if (low >= 0) low = 0;
  if (high === low) high = low + (Math.abs(low) || 1);
  const marks = ticks(low, high + (high - low) * 0.08);
  low = marks[0];
  high = marks.at(-1);
  const y = (value) => BOTTOM_OF_VALUES - ((value - low) / (high - low)) * (BOTTOM_OF_VALUES - TOP);
  // The bounds are named in a margin on the right, clear of the marks, as
  // wide on every chart whose names are short, so their steps line up.
  const longest = Math.max(NAMED, ...lines.map((line) => line.text.length));
  const right = lines.length ? Math.min(180, GAP + longest * CHARACTER) : GAP;
  const slot = (WIDTH - LEFT - right) / Math.max(measurements.length, 1);
  const x = (index) => LEFT + slot * (index + 0.5);
  const size = Math.max(1.6, Math.min(4, slot * 0.35));

  const parts = [];
  // The side of a lone bound that fails, shaded.
  if (fails) {
    const edge = y(lines[0].value);
    const [from, to] = fails === 'above' ? [TOP, edge] : [edge, BOTTOM_OF_VALUES];
    parts.push(svg('rect', { class: 'fails', x: LEFT, y: from, width: WIDTH - LEFT - right, height: to - from }));
  }
  for (const tick of marks) {
    parts.push(svg('line', { class: 'grid', x1: LEFT, x2: WIDTH - right, y1: y(tick), y2: y(tick) }));
    parts.push(svg('text', { class: 'tick', x: LEFT - 6, y: y(tick), 'text-anchor': 'end', 'dominant-baseline': 'middle' }, figure(tick)));
  }
  const noValue = measurements.some((measurement) => valueOf(measurement) === null);
  if (noValue) {
    parts.push(svg('text', { class: 'tick', x: LEFT - 6, y: NO_VALUE, 'text-anchor': 'end', 'dominant-baseline': 'middle' }, 'no value'));
    parts.push(svg('line', { class: 'grid', x1: LEFT, x2: WIDTH - right, y1: NO_VALUE, y2: NO_VALUE }));
  }
  // The steps: an edge where one ends, each named under its span.
  let start = 0;
  measurements.forEach((measurement, index) => {
    const next = measurements[index + 1];
    if (next && (next.step ?? 0) === (measurement.step ?? 0)) return;
    const from = LEFT + slot * start;
    const to = LEFT + slot * (index + 1);
    if (next) parts.push(svg('line', { class: 'step-edge', x1: to, x2: to, y1: TOP, y2: STEPS - 8 }));
    const text = stepLabel(measurement.step ?? 0);
    if (to - from >= text.length * CHARACTER) parts.push(svg('text', { class: 'step-name', x: (from + to) / 2, y: STEPS, 'text-anchor': 'middle', 'dominant-baseline': 'middle' }, text));
    start = index + 1;
  });
  // The bounds, each a dashed line named by its comparison at its end,
  // names of close bounds moved apart.
  let below = -Infinity;
  for (const line of [...lines].sort((a, b) => y(a.value) - y(b.value))) {
    parts.push(svg('line', { class: 'bound', x1: LEFT, x2: WIDTH - right, y1: y(line.value), y2: y(line.value), 'data-bound': line.value }));
    const at = Math.max(y(line.value), below + 12);
    parts.push(svg('text', { class: 'bound-name', x: WIDTH - right + 4, y: at, 'dominant-baseline': 'middle' }, line.text));
    below = at;
  }
  // The values as a line, broken where one is missing and between steps.
  let path = '';
  measurements.forEach((measurement, index) => {
    const value = valueOf(measurement);
    if (value === null) return;
    const before = measurements[index - 1];
    const joined = before && valueOf(before) !== null && (before.step ?? 0) === (measurement.step ?? 0);
    path += `${joined ? 'L' : 'M'}${x(index).toFixed(1)} ${y(value).toFixed(1)}`;
  });
  if (path) parts.push(svg('path', { class: 'line', d: path }));
  // A mark per measurement, its outcome as its shape and colour; one
  // without a value on the "no value" row.
  measurements.forEach((measurement, index) => {
    const value = valueOf(measurement);
    const { name: phase, kind } = phaseOf(measurement);
    const shown = measurement.value === undefined ? 'no value' : String(measurement.value);
    parts.push(mark(kind, x(index), value === null ? NO_VALUE : y(value), size, {
      'data-phase': phase,
      'data-value': value ?? '',
      'data-step': (measurement.step ?? 0) + 1,
    }, svg('title', {}, `${stepLabel(measurement.step ?? 0)}, ${label(measurement)}: ${shown}, ${phase}`)));
  });
  parts.push(svg('line', { class: 'axis', x1: LEFT, x2: LEFT, y1: TOP, y2: noValue ? NO_VALUE + 8 : BOTTOM_OF_VALUES }));

  return svg('svg', {
    class: 'chart',
    viewBox: `0 0 ${WIDTH} ${HEIGHT}`,
    role: 'img',
    'aria-label': described(name, measurements, condition, values, label),
    'data-analysis': name,
  }, parts);
}

// The chart's key: the mark of each phase drawn (the known ones first),
// the bound's line, and the side of it that fails when shaded.
export function legend(measurements, condition) {
  const kinds = new Map(Object.values(KNOWN).map((name) => [name, null]));
  for (const measurement of measurements) {
    const { name, kind } = phaseOf(measurement);
    kinds.set(name, kind);
  }
  const { bounds: lines, fails } = bounds(condition);
  const sample = (...children) => svg('svg', { viewBox: '0 0 16 12', 'aria-hidden': 'true', class: 'key' }, children);
  return h('ul', { class: 'chart-legend' },
    [...kinds].filter(([, kind]) => kind).map(([name, kind]) => h('li', {}, sample(mark(kind, 8, 6, 4)), name)),
    lines.length ? h('li', {}, sample(svg('line', { class: 'bound', x1: 0, x2: 16, y1: 6, y2: 6 })), 'bound of ', h('code', {}, condition)) : null,
    fails ? h('li', {}, sample(svg('rect', { class: 'fails', x: 1, y: 1, width: 14, height: 10 })), 'fails there') : null);
}
