#!/usr/bin/env node
import { main } from '../dist/cli/cta-eval.js';
await main(process.argv.slice(2));
