// Where a JSON text first goes wrong: the browser's JSON.parse does not
// always say (V8 names the token, not its place), so a small recursive
// descent over RFC 8259 finds the offset, told as line and column.

// The first syntax error of `text` as { line, column, message }, both
// counted from 1; null when `text` is JSON.
export function syntaxError(text) {
  let at = 0;
  const fail = (message) => {
    throw Object.assign(new Error(message), { offset: at });
  };
  const space = () => {
    while (at < text.length && ' \t\n\r'.includes(text[at])) at += 1;
  };
  const expect = (literal) => {
    if (text.startsWith(literal, at)) at += literal.length;
    else fail(`expected ${literal}`);
  };
  const string = () => {
    at += 1;
    while (at < text.length) {
      const char = text[at];
      if (char === '"') {
        at += 1;
        return;
      }
      if (char < ' ') fail('a control character inside a string: escape it');
      if (char === '\\') {
        at += 1;
        if (text[at] === 'u') {
          if (!/^[0-9a-fA-F]{4}$/.test(text.slice(at + 1, at + 5))) fail('\\u needs four hexadecimal digits');
          at += 5;
        } else if ('"\\/bfnrt'.includes(text[at] ?? 'x')) {
          at += 1;
        } else {
          fail('an unknown escape');
        }
      } else {
        at += 1;
      }
    }
    fail('a string that never ends');
  };
  const number = () => {
    const match = /^-?(0|[1-9]\d*)(\.\d+)?([eE][+-]?\d+)?/.exec(text.slice(at));
    if (!match || !match[0] || match[0] === '-') fail('a malformed number');
    at += match[0].length;
  };
  const value = () => {
    space();
    const char = text[at];
    if (char === '{') {
      at += 1;
      space();
      if (text[at] === '}') {
        at += 1;
        return;
      }
      for (;;) {
        space();
        if (text[at] !== '"') fail('expected a property name in double quotes');
        string();
        space();
        if (text[at] !== ':') fail("expected ':' after the property name");
        at += 1;
        value();
        space();
        if (text[at] === ',') {
          at += 1;
          space();
          if (text[at] === '}') fail('a comma before } (JSON allows none)');
          continue;
        }
        if (text[at] === '}') {
          at += 1;
          return;
        }
        fail("expected ',' or '}'");
      }
    }
    if (char === '[') {
      at += 1;
      space();
      if (text[at] === ']') {
        at += 1;
        return;
      }
      for (;;) {
        value();
        space();
        if (text[at] === ',') {
          at += 1;
          space();
          if (text[at] === ']') fail('a comma before ] (JSON allows none)');
          continue;
        }
        if (text[at] === ']') {
          at += 1;
          return;
        }
        fail("expected ',' or ']'");
      }
    }
    if (char === '"') return string();
    if (char === 't') return expect('true');
    if (char === 'f') return expect('false');
    if (char === 'n') return expect('null');
    if (char === '-' || (char >= '0' && char <= '9')) return number();
    fail(char === undefined ? 'the text ends where a value is expected' : 'expected a value');
  };
  try {
    value();
    space();
    if (at < text.length) fail('text after the end of the document');
    return null;
  } catch (error) {
    const before = text.slice(0, error.offset).split('\n');
    return { line: before.length, column: before[before.length - 1].length + 1, message: error.message };
  }
}
