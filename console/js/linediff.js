// A line diff (longest common subsequence) laid out side by side: rows of
// [left, right], each a { text, kind } with kind 'same', 'removed', 'added'
// or 'blank'. A side that is null has no line at all (a file added or
// removed), where '' is one empty line.

export function sideBySide(before, after) {
  const a = before === null ? [] : before.split('\n');
  const b = after === null ? [] : after.split('\n');
  // lengths[i][j]: the LCS of a[i..] and b[j..].
  const lengths = Array.from({ length: a.length + 1 }, () => new Uint32Array(b.length + 1));
  for (let i = a.length - 1; i >= 0; i -= 1) {
    for (let j = b.length - 1; j >= 0; j -= 1) {
      lengths[i][j] = a[i] === b[j] ? lengths[i + 1][j + 1] + 1 : Math.max(lengths[i + 1][j], lengths[i][j + 1]);
    }
  }
  const rows = [];
  let removed = [];
  let added = [];
  const flush = () => {
    for (let k = 0; k < Math.max(removed.length, added.length); k += 1) {
      rows.push([
        k < removed.length ? { text: removed[k], kind: 'removed' } : { text: '', kind: 'blank' },
        k < added.length ? { text: added[k], kind: 'added' } : { text: '', kind: 'blank' },
      ]);
    }
    removed = [];
    added = [];
  };
  let i = 0;
  let j = 0;
  while (i < a.length || j < b.length) {
    if (i < a.length && j < b.length && a[i] === b[j]) {
      flush();
      rows.push([{ text: a[i], kind: 'same' }, { text: b[j], kind: 'same' }]);
      i += 1;
      j += 1;
    } else if (j < b.length && (i === a.length || lengths[i][j + 1] >= lengths[i + 1][j])) {
      added.push(b[j]);
      j += 1;
    } else {
      removed.push(a[i]);
      i += 1;
    }
  }
  flush();
  return rows;
}
