#!/usr/bin/env node
import { main } from '../dist/cli/cta-report.js';
await main(process.argv.slice(2));
