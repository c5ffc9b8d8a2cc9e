/**
 * Command-line parsing shared by every bin: options are generated from the config schema, so a
 * config key and its flag cannot drift apart. yargs does the tokenising; values are validated by
 * the config layer (`coerce`) so flag and YAML errors read the same.
 */
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import type { Argv } from 'yargs';
import { CtaError } from '../util/errors.js';

/**
 * yargs through its CommonJS build: the ESM build ships no string-width helper and wraps help
 * text in the middle of words. Every bin takes yargs from here.
 */
export const yargs = createRequire(import.meta.url)('yargs') as (args: string[]) => Argv;
import { FIELDS, type FieldKey, type FieldSpec, defaultText, toCamel, toKebab } from '../config/schema.js';
import { resolveConfig } from '../config/load.js';
import { BOOL_EXPECTED, KEY_ALIASES, aliasNotice, parseBool } from '../config/aliases.js';
import type { CtaConfig } from '../config/schema.js';

/** The version in package.json (`--version` of every bin, provenance in written files). */
export function packageVersion(): string {
  try {
    return (JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version?: string }).version ?? 'unknown';
  } catch {
    return 'unknown';
  }
}

/**
 * yargs option settings for a value that the config layer (`coerce`) parses: numbers are declared
 * `number` for --help but also `string`, which keeps yargs from converting them (it would turn
 * `--lr abc` into NaN before coerce could name the bad text).
 */
export function valueOption(type: FieldSpec['type'] | 'string' | 'number'): { type: 'boolean' | 'number' | 'string'; string?: true } {
  if (type === 'bool') return { type: 'boolean' };
  if (type === 'number' || type === 'int') return { type: 'number', string: true };
  return { type: 'string' };
}

export const ALIAS_HELP =
  'Booleans: --x, --x=true|false (also 1/0, yes/no, any case), --x false, or --no-x. snake_case spellings ' +
  "(--batch_size) and the MECTA reference code's names (--level, --data cifar10|cifar100|IN, --model " +
  'rb_ResNeXt29_32x4d|rb_wrn28_10_std|rb_resnet50, --alg src|bn) are accepted; each alias prints a notice with our name.';

/**
 * Adds one option per config field (kebab-case; camelCase and snake_case spellings are accepted
 * too, see normalizeArgv). `omit`: fields this command does not use (not offered; the YAML key is
 * still accepted, since configs are shared with cta-eval).
 */
export function addConfigOptions(y: Argv, omit: readonly FieldKey[] = []): Argv {
  let out: Argv = y.option('config', {
    type: 'string',
    array: true,
    describe: 'YAML config file(s), merged left to right (a later file wins; flags override them all)',
    defaultDescription: 'none',
    group: 'config',
  });
  for (const [key, f] of Object.entries(FIELDS) as [FieldKey, FieldSpec][]) {
    if (omit.includes(key)) continue;
    const choices = f.type === 'enum' ? ` [${f.choices.join(', ')}]` : '';
    out = out.option(toKebab(key), {
      ...valueOption(f.type),
      describe: `${f.description}${choices}`,
      // Shown, not applied: an absent flag must leave the YAML value in place.
      defaultDescription: defaultText(key),
      group: f.group,
    });
  }
  return out;
}

interface YargsOptions {
  boolean: string[];
  key: Record<string, unknown>;
}

/**
 * Rewrites the command line before yargs reads it, so every bin spells options the same way:
 * `--snake_case` and `--camelCase` become `--kebab-case`; MECTA option names (KEY_ALIASES) become
 * ours with a notice; boolean options take `=VALUE` or a following value word in BOOL_WORDS
 * (yargs alone reads only the exact word 'true' as true, so `--accum-bn=True` was false) and any
 * other value is an error. Unknown options pass through unchanged for yargs to report.
 */
export function normalizeArgv(argv: readonly string[], y: Argv): string[] {
  const opts = (y as unknown as { getOptions(): YargsOptions }).getOptions();
  const known = new Set(Object.keys(opts.key));
  const booleans = new Set(opts.boolean);
  const out: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const tok = argv[i];
    if (tok === '--') {
      out.push(...argv.slice(i));
      break;
    }
    if (!tok.startsWith('--')) {
      out.push(tok);
      continue;
    }
    const eq = tok.indexOf('=');
    const written = tok.slice(2, eq < 0 ? undefined : eq);
    const value = eq < 0 ? undefined : tok.slice(eq + 1);
    let name = toKebab(written.replace(/_/g, '-'));
    let negated = false;
    if (!known.has(name)) {
      const alias = KEY_ALIASES[toCamel(name)];
      if (name.startsWith('no-') && booleans.has(name.slice(3))) {
        negated = true;
        name = name.slice(3);
      } else if (alias && known.has(toKebab(alias))) {
        aliasNotice(`--${written} is MECTA's name; using --${toKebab(alias)}`);
        name = toKebab(alias);
      } else {
        out.push(tok);
        continue;
      }
    }
    if (!booleans.has(name)) {
      out.push(value === undefined ? `--${name}` : `--${name}=${value}`);
      continue;
    }
    if (negated) {
      if (value !== undefined) throw new CtaError(`--no-${name} takes no value (write --${name}=false or --no-${name})`);
      out.push(`--no-${name}`);
      continue;
    }
    let b: boolean | null = true;
    if (value !== undefined) {
      b = parseBool(value);
      if (b === null) throw new CtaError(`--${name}: expected ${BOOL_EXPECTED}, got ${JSON.stringify(value)}`);
    } else if (i + 1 < argv.length && parseBool(argv[i + 1]) !== null) {
      // `--accum_bn True`, as argparse's str2bool options are written.
      b = parseBool(argv[++i]);
    }
    out.push(`--${name}=${String(b)}`);
  }
  return out;
}

/** Parses `argv` with `y` after normalizeArgv; every bin parses through here. */
export async function parseArgv(y: Argv, argv: readonly string[]): Promise<Record<string, unknown>> {
  return (await y.parseAsync(normalizeArgv(argv, y))) as Record<string, unknown>;
}

/** The --config files in command-line order (`--config a b` and `--config a --config b` alike). */
export function configFiles(argv: Record<string, unknown>): string[] {
  const v = argv.config;
  const list = v === undefined ? [] : Array.isArray(v) ? v.map(String) : [String(v)];
  if (v !== undefined && list.length === 0) throw new CtaError('--config: expected one or more YAML files');
  return list;
}

/** Picks the config-field values the user actually gave on the command line. */
export function flagValues(argv: Record<string, unknown>): Partial<Record<FieldKey, unknown>> {
  const flags: Partial<Record<FieldKey, unknown>> = {};
  for (const key of Object.keys(FIELDS) as FieldKey[]) {
    const v = argv[key];
    if (v === undefined) continue;
    // A flag repeated on the command line arrives as an array: the last one wins.
    flags[key] = Array.isArray(v) && FIELDS[key].type !== 'list' ? v[v.length - 1] : v;
  }
  return flags;
}

/** yargs lists an unknown `--foo-bar` twice (foo-bar, fooBar, from camel-case expansion): once. */
function dedupeUnknown(line: string): string {
  const m = /^Unknown arguments?: (.*)$/.exec(line);
  if (!m) return line;
  const names = m[1].split(', ');
  const kept = names.filter((n) => n === toKebab(n) || !names.includes(toKebab(n)));
  return `Unknown argument${kept.length > 1 ? 's' : ''}: ${kept.join(', ')}`;
}

/**
 * The settings every bin shares: strict options, kebab/camel flags, --help, terminal-width
 * wrapping, and parse failures turned into one CtaError line instead of yargs' help dump.
 */
export function configureCli(y: Argv, scriptName: string, usage: string): Argv {
  return y
    .scriptName(scriptName)
    .usage(usage)
    .strictOptions()
    .parserConfiguration({ 'camel-case-expansion': true, 'boolean-negation': true })
    .version(packageVersion())
    .help('help')
    .alias('help', 'h')
    .wrap(Math.min(120, process.stdout.columns || 100))
    .fail((msg, err) => {
      if (err) throw err;
      // runMain already prefixes `<cmd>: error:`; the message itself names no command.
      throw new CtaError(`${dedupeUnknown(msg.split('\n')[0])} (see ${scriptName} --help)`);
    });
}

/**
 * Parses argv for a command. Unknown flags and malformed values become CtaErrors (exit 2) rather
 * than yargs' multi-line help dump.
 */
export async function parseCommand<E extends Record<string, unknown>>(
  argv: string[],
  scriptName: string,
  usage: string,
  extra: (y: Argv) => Argv,
  omit: readonly FieldKey[] = [],
): Promise<{ cfg: CtaConfig; argv: E & Record<string, unknown> }> {
  const y = configureCli(extra(addConfigOptions(yargs(argv), omit)), scriptName, usage).epilogue(ALIAS_HELP);
  const parsed = await parseArgv(y, argv);
  const positional = (parsed._ as unknown[]) ?? [];
  if (positional.length > 0 && scriptName === 'cta-eval') {
    throw new CtaError(`${scriptName}: unexpected argument '${String(positional[0])}' (options start with --)`);
  }
  const configPath = configFiles(parsed);
  const cfg = resolveConfig(configPath, flagValues(parsed));
  return { cfg, argv: parsed as E & Record<string, unknown> };
}
