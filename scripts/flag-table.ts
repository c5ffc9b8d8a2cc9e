/**
 * Builds the README flag table from the config schema (the single source of truth).
 * test/readme.test.ts checks that README.md contains exactly this table.
 */
import { FIELDS, defaultText, toKebab, type FieldKey, type FieldSpec } from '../src/config/schema.js';

export function flagTable(): string {
  const rows = ['| flag | YAML key | default | values | meaning |', '|---|---|---|---|---|'];
  for (const [key, f] of Object.entries(FIELDS) as [FieldKey, FieldSpec][]) {
    // The same text as --help shows.
    const def = defaultText(key).replace(/\|/g, '\\|');
    let values = '';
    if (f.type === 'enum') values = f.choices.join(' \\| ');
    else if (f.type === 'list') values = 'comma-separated corruption names';
    else if (f.type === 'bool') values = `true / false (\`--no-${toKebab(key)}\`)`;
    else if (f.type === 'int' || f.type === 'number') {
      values = `${f.type === 'int' ? 'integer' : 'number'}${f.min !== undefined ? ` ${'exclusiveMin' in f && f.exclusiveMin ? '>' : '≥'} ${f.min}` : ''}${f.max !== undefined ? `, ≤ ${f.max}` : ''}`;
    } else values = 'path';
    rows.push(`| \`--${toKebab(key)}\` | \`${toKebab(key)}\` | ${def} | ${values} | ${f.description.replace(/\|/g, '\\|')} |`);
  }
  return rows.join('\n');
}
