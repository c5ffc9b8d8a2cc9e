#!/usr/bin/env bash
# Packs what a GPU check needs on a machine that has Python but no Node and no network into
# .device/cta-gpu-bundle.tar.xz (ignored by git; under 60 MiB): this machine's node binary, the
# pruned runtime node_modules (scripts/device/stage.mjs: tfjs, the webgpu backend, Dawn's
# dawn.node for linux-x64, sharp, vitest), the build (dist/), the bins, the bench, the configs,
# the sources and fixtures the webgpu tests read, and the Vulkan loader (libvulkan1 .deb, from
# Debian's archive) for a machine whose image lacks it.
#
#   scripts/device/bundle.sh            build, stage, pack
#   CTA_BUNDLE_NO_BUILD=1 ...           pack the dist/ that is there (skip tsc)
#
# Then, on the GPU machine (or here, to test it): scripts/device/gpu-check.sh unpacks the bundle
# into an empty folder and runs the checks from there.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$ROOT"
OUT_DIR="$ROOT/.device"
BUNDLE="$OUT_DIR/cta-gpu-bundle.tar.xz"
LIMIT=$((60 * 1024 * 1024))
STAGE="$(mktemp -d "${TMPDIR:-/tmp}/cta-bundle-XXXXXX")"
trap 'rm -rf "$STAGE"' EXIT

say() { printf 'bundle: %s\n' "$*" >&2; }

[ "$(uname -m)" = x86_64 ] || { say "the GPU machine is x86-64 and this one is $(uname -m): its node binary would not run there"; exit 1; }
if [ -z "${CTA_BUNDLE_NO_BUILD:-}" ]; then
  say "building dist/ (tsc)"
  npx tsc -p tsconfig.json || { say "the build failed; fix it, or CTA_BUNDLE_NO_BUILD=1 to pack the dist/ that is there"; exit 1; }
fi
[ -f dist/webgpu.js ] || { say "dist/webgpu.js missing: build first"; exit 1; }

node scripts/device/stage.mjs "$STAGE" >&2

# The runtime: the official Node build needs only glibc and libstdc++ (no libnode.so).
mkdir -p "$STAGE/node/bin"
cp "$(readlink -f "$(command -v node)")" "$STAGE/node/bin/node"
if ldd "$STAGE/node/bin/node" | grep -q 'libnode\|libuv\|libssl'; then
  say "this node binary links shared Node libraries ($(command -v node)); use an official nodejs.org build"
  exit 1
fi

# The project: the build, the bins, the bench, the configs, and what the webgpu tests read.
copy() { for p in "$@"; do mkdir -p "$STAGE/$(dirname "$p")"; cp -R "$p" "$STAGE/$p"; done; }
# (test/*.ts that are not tests: the setup files vitest.config.ts names)
copy package.json tsconfig.json vitest.config.ts dist bin configs src scripts/bench.mjs scripts/bench scripts/device \
  $(ls test/*.ts | grep -v '\.test\.ts$') test/e2e/helpers.ts test/e2e/webgpu.test.ts test/fixtures/adapt \
  test/fixtures/models/resnext_small.safetensors test/fixtures/models/resnext_small.io.safetensors
find "$STAGE/dist" -name '*.map' -delete

# The Vulkan loader for an image without one (Debian's libvulkan1; kept between runs here).
DEBS="$OUT_DIR/debs"
if ! ls "$DEBS"/libvulkan1_*.deb >/dev/null 2>&1; then
  say "downloading the Vulkan loader (libvulkan1) from Debian's archive"
  mkdir -p "$DEBS" "$OUT_DIR/apt-lists/partial"
  o="-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=$OUT_DIR/apt-lists"
  # shellcheck disable=SC2086
  if ! { apt-get $o update -qq && (cd "$DEBS" && apt-get $o download libvulkan1 -qq); }; then
    say "warning: could not download libvulkan1; the check then relies on the GPU machine's own loader"
  fi
fi
mkdir -p "$STAGE/debs"
cp "$DEBS"/*.deb "$STAGE/debs/" 2>/dev/null || true

mkdir -p "$OUT_DIR"
say "compressing (xz -9)"
tar -C "$STAGE" -cf - . | xz -9 -T2 > "$BUNDLE.part"
mv "$BUNDLE.part" "$BUNDLE"
size=$(stat -c %s "$BUNDLE")
say "$(realpath --relative-to="$ROOT" "$BUNDLE"): $((size / 1024 / 1024)) MiB ($size bytes)"
if [ "$size" -ge "$LIMIT" ]; then
  say "over the 60 MiB limit"
  exit 1
fi
