/**
 * Other spellings the config layer accepts, in one typed place beside the schema: boolean words,
 * and the option names and values of the MECTA reference implementation, so a command line or
 * config written for it runs here as typed. Flags, YAML configs and sweep files all go through
 * these tables (src/cli/args.ts for flag names, src/config/load.ts `coerce` for values); each
 * alias prints one `notice:` line with the canonical spelling, so the user learns the real name
 * and the run folder's resolved config only ever holds canonical values.
 */
import type { CtaConfig, FieldKey } from './schema.js';

/**
 * Boolean words, compared case-insensitively: the values Python `str2bool` helpers take (MECTA
 * writes `--accum_bn=True`). Anything else is refused rather than read as false.
 */
export const BOOL_WORDS: Readonly<Record<string, boolean>> = { true: true, false: false, '1': true, '0': false, yes: true, no: false };

/** What a boolean value may be, for error messages. */
export const BOOL_EXPECTED = 'true or false (also 1/0, yes/no)';

/** A boolean from a flag, YAML or sweep value (booleans, 1/0, or one of `BOOL_WORDS`), else null. */
export function parseBool(raw: unknown): boolean | null {
  if (typeof raw === 'boolean') return raw;
  if (raw === 1 || raw === 0) return raw === 1;
  if (typeof raw !== 'string') return null;
  const w = raw.trim().toLowerCase();
  return Object.prototype.hasOwnProperty.call(BOOL_WORDS, w) ? BOOL_WORDS[w] : null;
}

/** MECTA option names that differ from ours beyond snake_case (which is accepted as is). */
export const KEY_ALIASES: Readonly<Record<string, FieldKey>> = {
  level: 'severity',
};

type EnumValues<K extends FieldKey> = Readonly<Record<string, CtaConfig[K]>>;

const MECTA_ALGS: EnumValues<'alg'> = { src: 'source', bn: 'norm' };

/**
 * MECTA values of our enum fields → ours. Typed by field, so a target that is not one of the
 * field's choices does not compile. Models: MECTA's model names (rb_ = RobustBench corruption
 * models); `resnet50` is spelt the same in both. Its torchvision ViT (`ViT`) has other key names
 * than our timm vit_b16, so it has no alias.
 */
export const VALUE_ALIASES: { readonly [K in 'data' | 'model' | 'alg' | 'compareWith']: EnumValues<K> } = {
  data: { cifar10: 'cifar10c', cifar100: 'cifar100c', IN: 'imagenetc' },
  model: {
    rb_ResNeXt29_32x4d: 'resnext29', // Hendrycks2020AugMix_ResNeXt (CIFAR-10 and CIFAR-100)
    rb_wrn28_10_std: 'wrn28_10', // RobustBench 'Standard'
    rb_resnet50: 'resnet50', // Hendrycks2020Many (ImageNet)
  },
  alg: MECTA_ALGS,
  compareWith: MECTA_ALGS,
};

/** The canonical value for a MECTA spelling of `key`'s value, or null when `raw` is not one. */
export function valueAlias(key: FieldKey, raw: unknown): string | null {
  if (typeof raw !== 'string' || !Object.prototype.hasOwnProperty.call(VALUE_ALIASES, key)) return null;
  const table = VALUE_ALIASES[key as keyof typeof VALUE_ALIASES] as Readonly<Record<string, string>>;
  return Object.prototype.hasOwnProperty.call(table, raw) ? table[raw] : null;
}

/**
 * MECTA's evaluation script sets EATA's margins from --data; ours are plain defaults (CIFAR-10's), so
 * the notice says what to add where they differ.
 */
const EATA_NOTE = "MECTA's EATA uses --d-margin 0.05 --fisher-alpha 2000 there; ours default to 0.4 and 1";
const ALIAS_NOTES: { readonly [K in keyof typeof VALUE_ALIASES]?: Readonly<Record<string, string>> } = {
  data: { cifar100: EATA_NOTE, IN: `${EATA_NOTE} (configs/imagenet/eata.yaml sets them)` },
};

/** The extra remark for a value alias, or null. */
export function valueAliasNote(key: FieldKey, raw: unknown): string | null {
  const table = (ALIAS_NOTES as Record<string, Readonly<Record<string, string>> | undefined>)[key];
  return typeof raw === 'string' && table && Object.prototype.hasOwnProperty.call(table, raw) ? table[raw] : null;
}

/** Where alias notices go: stderr, one line each (stdout stays the result). */
export function aliasNotice(line: string): void {
  process.stderr.write(`notice: ${line}\n`);
}
