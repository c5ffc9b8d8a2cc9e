#!/usr/bin/env bash
# The GPU check for a lent accelerator (a machine with Python but no Node and no network). Unpacks
# the bundle of scripts/device/bundle.sh into an empty folder and runs, from there: the adapter
# probe, profile-mem on webgpu, the bench (--backends webgpu, then wasm for comparison) and the
# webgpu parity + e2e tests. Writes $OUT/gpu-check.json (the adapter and one record per step) and
# $OUT/gpu-check.log (everything printed), plus bench.jsonl, profile-mem.json and tests.json.
#
#   scripts/device/gpu-check.sh [BUNDLE]     default .device/cta-gpu-bundle.tar.xz
#
# Environment: OUT (default .device/out); CTA_GPU_CHECK_DIR, the folder to unpack into (must be
# empty or absent; default .device/run, emptied first); CTA_GPU_CHECK_BUDGET_S, the wall time all
# steps may take (default 540: one device command may run 600 s); CTA_GPU_CHECK_QUICK=1, a
# shorter bench; CTA_DAWN_BACKEND (vulkan | opengles) forces Dawn's backend.
#
# Where the image has no Vulkan loader, the bundled libvulkan1 is unpacked beside the check and
# put on LD_LIBRARY_PATH (nothing is installed into /). NVIDIA's ICD file is used from
# /usr/local/nvidia when the loader's own folders lack it. Without a GPU (this machine) the
# adapter is Mesa's llvmpipe through Dawn's OpenGL ES backend.
set -uo pipefail

if [ "${1:-}" != --in-bundle ]; then
  ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
  BUNDLE="$(realpath "${1:-$ROOT/.device/cta-gpu-bundle.tar.xz}")"
  export OUT="${OUT:-$ROOT/.device/out}"
  DIR="${CTA_GPU_CHECK_DIR:-$ROOT/.device/run}"
  [ -f "$BUNDLE" ] || { echo "gpu-check: no bundle at $BUNDLE (run scripts/device/bundle.sh here first)" >&2; exit 2; }
  if [ -z "${CTA_GPU_CHECK_DIR:-}" ]; then rm -rf "$DIR"; fi
  if [ -e "$DIR" ] && [ -n "$(ls -A "$DIR" 2>/dev/null)" ]; then
    echo "gpu-check: $DIR is not empty (the bundle unpacks into an empty folder)" >&2
    exit 2
  fi
  mkdir -p "$DIR" "$OUT"
  t0=$(date +%s)
  if command -v xz >/dev/null 2>&1; then
    tar -xJf "$BUNDLE" -C "$DIR"
  else
    python3 -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])' "$BUNDLE" "$DIR"
  fi || { echo "gpu-check: unpacking $BUNDLE failed" >&2; exit 1; }
  echo "gpu-check: unpacked $(basename "$BUNDLE") into $DIR in $(($(date +%s) - t0)) s" >&2
  cd "$DIR" && exec bash scripts/device/gpu-check.sh --in-bundle
fi

# ---- inside the unpacked bundle -------------------------------------------------------------
B="$(pwd)"
export PATH="$B/node/bin:$PATH"
export OUT="${OUT:-$B/out}"
mkdir -p "$OUT"
LOG="$OUT/gpu-check.log"
STEPS="$B/.steps.tsv"
: >"$LOG"
: >"$STEPS"
BUDGET="${CTA_GPU_CHECK_BUDGET_S:-540}"
START=$(date +%s)
log() { printf '%s\n' "$*" | tee -a "$LOG" >&2; }

# Runs one step under a time limit (its share, or what is left of the budget less a reserve for
# the summary); records name, exit code and seconds.
step() {
  local name="$1" max="$2"
  shift 2
  local left=$((BUDGET - ($(date +%s) - START) - 15))
  if [ "$left" -lt 20 ]; then
    log "== $name: skipped (budget of ${BUDGET} s spent)"
    printf '%s\t%s\t%s\n' "$name" skipped 0 >>"$STEPS"
    return
  fi
  local limit=$((max < left ? max : left))
  log "== $name (limit ${limit} s): $*"
  local t=$(date +%s)
  timeout --kill-after=10 "$limit" "$@" >>"$LOG" 2>&1
  local rc=$?
  log "== $name: exit $rc after $(($(date +%s) - t)) s"
  printf '%s\t%s\t%s\n' "$name" "$rc" "$(($(date +%s) - t))" >>"$STEPS"
}

log "gpu-check in $B; node $(node --version); $(uname -srm)"
command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >>"$LOG" 2>&1

# The Vulkan loader.
if ! ldconfig -p 2>/dev/null | grep -q 'libvulkan\.so\.1'; then
  for deb in debs/*.deb; do
    [ -f "$deb" ] || continue
    if command -v dpkg-deb >/dev/null 2>&1; then
      dpkg-deb -x "$deb" gl
    else
      python3 - "$deb" gl <<'PY'
import io, sys, tarfile
data = open(sys.argv[1], 'rb').read()
pos = 8  # an ar archive: "!<arch>\n", then 60-byte headers
while pos < len(data):
    name = data[pos:pos + 16].decode().strip().rstrip('/')
    size = int(data[pos + 48:pos + 58].decode().strip())
    body = data[pos + 60:pos + 60 + size]
    if name.startswith('data.tar'):
        tarfile.open(fileobj=io.BytesIO(body)).extractall(sys.argv[2])
    pos += 60 + size + (size & 1)
PY
    fi
  done
  if [ -e gl/usr/lib/x86_64-linux-gnu/libvulkan.so.1 ]; then
    export LD_LIBRARY_PATH="$B/gl/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    log "Vulkan loader: the bundled libvulkan1 ($B/gl)"
  else
    log "Vulkan loader: none (not on the image and not in the bundle): Dawn has only OpenGL ES"
  fi
else
  log "Vulkan loader: the image's ($(ldconfig -p | grep -m1 'libvulkan\.so\.1' | sed 's/.*=> //'))"
fi
NV_ICD=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
if [ -z "${VK_DRIVER_FILES:-}${VK_ICD_FILENAMES:-}" ] && [ -f "$NV_ICD" ] && ! ls /usr/share/vulkan/icd.d/nvidia* /etc/vulkan/icd.d/nvidia* >/dev/null 2>&1; then
  export VK_DRIVER_FILES="$NV_ICD"
  log "Vulkan driver: $NV_ICD"
fi

# 1. The adapter (one line of JSON; the rest of the check depends on whether it is hardware).
step adapter 60 node --input-type=module -e "
  const { initBackend } = await import('$B/dist/tf.js');
  const info = await initBackend('webgpu');
  console.log('@@ADAPTER@@ ' + JSON.stringify({ backend: info.name, adapter: info.adapter, notice: info.notice }));
"
SOFTWARE=$(grep -m1 '^@@ADAPTER@@' "$LOG" | grep -q '"software":false' && echo no || echo yes)
log "software adapter: $SOFTWARE"

# 2. Measured memory on webgpu (engine and GPU bytes); one batch size on a software rasteriser,
# where a ResNeXt-29 step takes tens of seconds.
if [ "$SOFTWARE" = yes ]; then PROFILE=(--batch-sizes 16 --steps 1); else PROFILE=(--batch-sizes 16,64 --steps 3); fi
step profile-mem 120 node bin/profile-mem.js --backend webgpu --model resnext29 --synthetic --alg tent "${PROFILE[@]}" --json "$OUT/profile-mem.json"

# 3. The bench: webgpu at two batch sizes, then WASM on the same CPU for the ratio.
if [ -n "${CTA_GPU_CHECK_QUICK:-}" ] || [ "$SOFTWARE" = yes ]; then
  GPU_BENCH=(--batches 16 --modes tent --reps 2 --warmup 1)
  CPU_BENCH=(--batches 16 --modes tent --reps 2 --warmup 1)
else
  GPU_BENCH=(--batches 16,64 --modes inference,tent,eata+mecta --reps 5 --warmup 2)
  CPU_BENCH=(--batches 16 --modes tent,eata+mecta --reps 5 --warmup 2)
fi
: >"$OUT/bench.jsonl"
step bench-webgpu 240 node scripts/bench.mjs --backends webgpu --models resnext29 "${GPU_BENCH[@]}" --no-jpeg --no-ceiling --no-compare-torch --timeout 200 --json "$B/bench-webgpu.jsonl"
step bench-wasm 150 node scripts/bench.mjs --backends wasm --models resnext29 "${CPU_BENCH[@]}" --no-jpeg --no-ceiling --no-compare-torch --timeout 140 --json "$B/bench-wasm.jsonl"
cat "$B"/bench-*.jsonl >"$OUT/bench.jsonl" 2>/dev/null

# 4. The webgpu tests; on a hardware adapter every parity case and the full 20-step leak runs.
if [ "$SOFTWARE" = no ]; then
  export PARITY_CASES=all PARITY_LEAK=all PARITY_LEAK_STEPS=20
fi
step tests 200 node node_modules/vitest/vitest.mjs run src/algorithms/parity-webgpu.test.ts test/e2e/webgpu.test.ts \
  --reporter=default --reporter=json --outputFile.json="$OUT/tests.json"

# Summary.
node --input-type=module -e "
  import { readFileSync, writeFileSync, existsSync } from 'node:fs';
  const log = readFileSync('$LOG', 'utf8');
  const line = log.split('\n').find((l) => l.startsWith('@@ADAPTER@@ '));
  const steps = readFileSync('$STEPS', 'utf8').trim().split('\n').filter(Boolean).map((l) => {
    const [name, rc, seconds] = l.split('\t');
    return { name, exit: rc === 'skipped' ? null : Number(rc), seconds: Number(seconds), ...(rc === 'skipped' ? { skipped: true } : {}) };
  });
  const bench = existsSync('$OUT/bench.jsonl') ? readFileSync('$OUT/bench.jsonl', 'utf8').split('\n').filter((l) => l.startsWith('{')).map((l) => JSON.parse(l)) : [];
  const tests = existsSync('$OUT/tests.json') ? JSON.parse(readFileSync('$OUT/tests.json', 'utf8')) : null;
  const out = {
    tool: 'gpu-check',
    node: process.version,
    env: { LD_LIBRARY_PATH: process.env.LD_LIBRARY_PATH ?? null, VK_DRIVER_FILES: process.env.VK_DRIVER_FILES ?? null, CTA_DAWN_BACKEND: process.env.CTA_DAWN_BACKEND ?? null },
    adapter: line ? JSON.parse(line.slice(12)) : null,
    steps,
    bench: bench.map((r) => ({ backend: r.backend, threads: r.threads, model: r.model, batch: r.batch, mode: r.mode, status: r.status, imgPerSecMed: r.imgPerSecMed, stepPeakBytes: r.stepPeakBytes, gpuStepPeakBytes: r.gpuStepPeakBytes, gpuPoolBytes: r.gpuPoolBytes, error: r.error })),
    tests: tests ? { passed: tests.numPassedTests, failed: tests.numFailedTests, skipped: tests.numPendingTests, total: tests.numTotalTests } : null,
    ok: steps.every((s) => s.exit === 0),
  };
  writeFileSync('$OUT/gpu-check.json', JSON.stringify(out, null, 2) + '\n');
  console.error('gpu-check: ' + (out.ok ? 'all steps passed' : 'FAILED: ' + steps.filter((s) => s.exit !== 0).map((s) => s.name).join(', ')) + '; $OUT/gpu-check.json');
  process.exitCode = out.ok ? 0 : 1;
"
