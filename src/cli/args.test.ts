import { describe, it, expect, vi, afterEach } from 'vitest';
import { parseCommand } from './args.js';
import { CtaError } from '../util/errors.js';

const parse = (argv: string[]) => parseCommand(argv, 'cta-eval', '$0', (y) => y);

async function errorOf(argv: string[]): Promise<string> {
  try {
    await parse(argv);
  } catch (e) {
    expect(e).toBeInstanceOf(CtaError);
    const msg = (e as Error).message;
    expect(msg).not.toContain('\n');
    return msg;
  }
  throw new Error(`expected a CtaError for ${argv.join(' ')}`);
}

afterEach(() => {
  vi.restoreAllMocks();
});

describe('boolean flags', () => {
  it('--flag=VALUE takes true/false/1/0/yes/no in any case (MECTA writes --accum_bn=True)', async () => {
    const { cfg } = await parse(['--accum-bn=True', '--forget-gate=True', '--clean-last=True']);
    expect(cfg).toMatchObject({ accumBn: true, forgetGate: true, cleanLast: true });
    for (const v of ['1', 'yes', 'YES', 'true', 'TRUE', 'Yes']) {
      expect((await parse([`--accum-bn=${v}`])).cfg.accumBn).toBe(true);
    }
    for (const v of ['0', 'no', 'NO', 'false', 'False']) {
      expect((await parse([`--clean-last=${v}`])).cfg.cleanLast).toBe(false);
    }
  });

  it('a bare flag is true, --no-flag false, and a separate value word is read too', async () => {
    expect((await parse(['--accum-bn'])).cfg.accumBn).toBe(true);
    expect((await parse(['--no-clean-last'])).cfg.cleanLast).toBe(false);
    expect((await parse(['--accum-bn', 'True', '--forget-gate', 'yes'])).cfg).toMatchObject({ accumBn: true, forgetGate: true });
    expect((await parse(['--clean-last', 'False'])).cfg.cleanLast).toBe(false);
    // A following option is not a value.
    expect((await parse(['--accum-bn', '--forget-gate'])).cfg).toMatchObject({ accumBn: true, forgetGate: true });
    // camelCase spelling behaves the same.
    expect((await parse(['--accumBn=True'])).cfg.accumBn).toBe(true);
  });

  it('anything else is one error line naming the flag', async () => {
    expect(await errorOf(['--accum-bn=maybe'])).toBe('--accum-bn: expected true or false (also 1/0, yes/no), got "maybe"');
    expect(await errorOf(['--clean-last='])).toBe('--clean-last: expected true or false (also 1/0, yes/no), got ""');
    expect(await errorOf(['--no-accum-bn=true'])).toContain('--no-accum-bn takes no value');
  });
});

describe('spellings and MECTA names on the command line', () => {
  it('snake_case and camelCase flags are the kebab-case ones; --level is --severity with one notice', async () => {
    const lines: string[] = [];
    vi.spyOn(process.stderr, 'write').mockImplementation((s: string | Uint8Array) => (lines.push(String(s)), true));
    const { cfg } = await parse(['--batch_size=8', '--n_examples', '4', '--bnDistScale', '2', '--level', '3', '--data', 'cifar100', '--alg=src']);
    expect(cfg).toMatchObject({ batchSize: 8, nExamples: 4, bnDistScale: 2, severity: 3, data: 'cifar100c', alg: 'source' });
    expect(lines).toEqual([
      "notice: --level is MECTA's name; using --severity\n",
      "notice: --data cifar100 is MECTA's name; using --data cifar100c (MECTA's EATA uses --d-margin 0.05 --fisher-alpha 2000 there; ours default to 0.4 and 1)\n",
      "notice: --alg src is MECTA's name; using --alg source\n",
    ]);
  });

  it('a field a command omits is an unknown option, named once', async () => {
    const err = await parseCommand(['--batch-size', '4'], 'profile-mem', '$0', (y) => y, ['batchSize']).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(CtaError);
    expect((err as Error).message).toBe('Unknown argument: batch-size (see profile-mem --help)');
  });
});
