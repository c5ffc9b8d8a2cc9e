#!/usr/bin/env node
import { main } from '../dist/cli/cta-train.js';
await main(process.argv.slice(2));
