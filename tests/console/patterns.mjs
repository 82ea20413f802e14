// Every literal `pattern` of the console's inputs, compiled as a browser
// compiles the attribute: `^(?:PATTERN)$` with the v flag (the HTML
// standard's "compile a pattern attribute regular expression"). A browser
// that cannot compile one logs an error and checks nothing; this finds it
// without a browser. Patterns computed at run time (a schema's) are the
// browser tests' to probe.
//
// node tests/console/patterns.mjs console/: prints each pattern that does
// not compile and exits 1; else prints how many were checked.

import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';

const root = process.argv[2] ?? 'console';
const files = (dir) => readdirSync(dir, { withFileTypes: true }).flatMap((entry) =>
  entry.isDirectory() ? files(join(dir, entry.name)) : [join(dir, entry.name)]);

// A quoted string, single or double, with its escapes.
const quoted = String.raw`('(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")`;
// In scripts: `pattern: '…'` (a property of h()), `.pattern = '…'`,
// `setAttribute('pattern', '…')`; the literal is read as JavaScript reads it.
const inScript = new RegExp(String.raw`(?:\bpattern\s*[:=]\s*|setAttribute\(\s*['"]pattern['"]\s*,\s*)` + quoted, 'g');
// In markup: `pattern="…"`, read as written.
const inMarkup = /\bpattern\s*=\s*(?:"([^"]*)"|'([^']*)')/g;

const found = [];
for (const file of files(root)) {
  const text = readFileSync(file, 'utf8');
  if (file.endsWith('.js') || file.endsWith('.mjs')) {
    for (const match of text.matchAll(inScript)) {
      found.push({ file, pattern: new Function(`return ${match[1]};`)() });
    }
  } else if (file.endsWith('.html')) {
    for (const match of text.matchAll(inMarkup)) found.push({ file, pattern: match[1] ?? match[2] });
  }
}

if (found.length === 0) {
  console.log(`no pattern found under ${root}: the search no longer sees how the console writes them`);
  process.exit(1);
}
let failed = 0;
for (const { file, pattern } of found) {
  try {
    new RegExp(`^(?:${pattern})$`, 'v');
  } catch (error) {
    failed += 1;
    console.log(`${file}: ${pattern}: ${error.message}`);
  }
}
if (failed > 0) process.exit(1);
console.log(`patterns checked: ${found.length}, each compiles with the v flag`);
