// Preloaded (node --import) by test/e2e/resume.test.ts: exits with code 99 right after the
// checkpoint of domain CTA_TEST_EXIT_AFTER_DOMAIN is written, as a crash at that boundary would.
import { onCheckpoint } from '../../dist/runner/events.js';

const after = process.env.CTA_TEST_EXIT_AFTER_DOMAIN;
onCheckpoint((_dir, finished) => {
  if (String(finished) === after) process.exit(99);
});
