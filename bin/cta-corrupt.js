#!/usr/bin/env node
import { main } from '../dist/cli/cta-corrupt.js';
await main(process.argv.slice(2));
