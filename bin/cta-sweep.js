#!/usr/bin/env node
import { main } from '../dist/cli/cta-sweep.js';
await main(process.argv.slice(2));
