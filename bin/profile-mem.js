#!/usr/bin/env node
import { main } from '../dist/cli/profile-mem.js';
await main(process.argv.slice(2));
