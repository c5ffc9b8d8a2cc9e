/**
 * Command-line parsing shared by every bin: options are generated from the config schema, so a
 * config key and its flag cannot drift apart. yargs does the tokenising; values are validated by
 * the config layer (`coerce`) so flag and YAML errors read the same.
 */
import { createRequire } from 'node:module';
import type { Argv } from 'yargs';
import { CtaError } from '../util/errors.js';

/**
 * yargs through its CommonJS build: the ESM build ships no string-width helper and wraps help
 * text in the middle of words. Every bin takes yargs from here.
 */
export const yargs = createRequire(import.meta.url)('yargs') as (args: string[]) => Argv;
import { FIELDS, type FieldKey, toKebab } from '../config/schema.js';
import { resolveConfig } from '../config/load.js';
import type { CtaConfig } from '../config/schema.js';

/** Adds one option per config field (kebab-case; yargs also accepts the camelCase spelling). */
export function addConfigOptions(y: Argv): Argv {
  let out: Argv = y.option('config', { type: 'string', describe: 'YAML config file (flags override it)', group: 'config' });
  for (const [key, f] of Object.entries(FIELDS)) {
    const choices = f.type === 'enum' || f.type === 'list' ? ` [${f.choices.join(', ')}]` : '';
    const def = Array.isArray(f.default) ? '' : ` (default ${f.default === null ? 'none' : String(f.default)})`;
    out = out.option(toKebab(key), {
      type: f.type === 'bool' ? 'boolean' : 'string',
      describe: `${f.description}${f.type === 'list' ? '' : choices}${def}`,
      group: f.group,
    });
  }
  return out;
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
    .version(false)
    .help('help')
    .alias('help', 'h')
    .wrap(Math.min(120, process.stdout.columns || 100))
    .fail((msg, err) => {
      if (err) throw err;
      // runMain already prefixes `<cmd>: error:`; the message itself names no command.
      throw new CtaError(`${msg.split('\n')[0]} (see ${scriptName} --help)`);
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
): Promise<{ cfg: CtaConfig; argv: E & Record<string, unknown> }> {
  const y = configureCli(extra(addConfigOptions(yargs(argv))), scriptName, usage);
  const parsed = (await y.parseAsync()) as Record<string, unknown>;
  const positional = (parsed._ as unknown[]) ?? [];
  if (positional.length > 0 && scriptName === 'cta-eval') {
    throw new CtaError(`${scriptName}: unexpected argument '${String(positional[0])}' (options start with --)`);
  }
  const configPath = typeof parsed.config === 'string' ? parsed.config : null;
  const cfg = resolveConfig(configPath, flagValues(parsed));
  return { cfg, argv: parsed as E & Record<string, unknown> };
}
