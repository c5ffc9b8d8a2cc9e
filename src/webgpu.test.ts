/**
 * src/webgpu.ts without starting Dawn: adapter classification, the notice line, the Dawn routes
 * (Vulkan only where a loader and a driver manifest exist; OpenGL ES only by name), the shader-cache default and a bad
 * CTA_DAWN_BACKEND. The backend itself runs in parity-webgpu.test.ts and test/e2e/webgpu.test.ts.
 */
import { afterAll, describe, expect, it } from 'vitest';
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { tf } from './tf.js';
import { DEFAULT_SHADER_CACHE, adapterNotice, configureShaderCache, dawnRoutes, isSoftwareAdapter, startWebGpu, vulkanDriverListed, vulkanLoaderPresent } from './webgpu.js';

const tmp = mkdtempSync(join(tmpdir(), 'cta-webgpu-unit-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));
const noCache = join(tmp, 'no-ld-cache');

describe('webgpu adapter selection', () => {
  it('classifies software rasterisers and fallback adapters', () => {
    expect(isSoftwareAdapter({ device: 'llvmpipe-llvm-15-0-6-256-bits-', description: 'OpenGL ES 3.2 Mesa 22.3.6' })).toBe(true);
    expect(isSoftwareAdapter({ vendor: 'mesa', description: 'lavapipe' })).toBe(true);
    expect(isSoftwareAdapter({ vendor: 'google', architecture: 'swiftshader' })).toBe(true);
    expect(isSoftwareAdapter({ vendor: 'nvidia', architecture: 'hopper', description: 'NVIDIA H200' }, true)).toBe(true);
    expect(isSoftwareAdapter({ vendor: 'nvidia', architecture: 'hopper', description: 'NVIDIA H200' })).toBe(false);
  });

  it('names the adapter in one notice line', () => {
    const hw = adapterNotice({ vendor: 'nvidia', architecture: 'hopper', device: '', description: 'NVIDIA H200', software: false, route: 'default' });
    expect(hw).toBe('notice: webgpu adapter: vendor nvidia, architecture hopper, ?, NVIDIA H200 (Dawn)');
    const sw = adapterNotice({ vendor: '', architecture: '', device: 'llvmpipe', description: 'Mesa', software: true, route: 'opengles' });
    expect(sw).toMatch(/^notice: webgpu adapter: vendor \?, architecture \?, llvmpipe, Mesa \(Dawn on OpenGL ES; a software rasteriser/);
    expect(sw).not.toContain('\n');
  });

  it('tries Vulkan only where a loader is found, OpenGL ES only when asked for by name', () => {
    expect(vulkanLoaderPresent({ LD_LIBRARY_PATH: '' }, noCache)).toBe(false);
    expect(dawnRoutes(false, { LD_LIBRARY_PATH: '' }, noCache)).toEqual([]);
    expect(dawnRoutes(true, { LD_LIBRARY_PATH: '' }, noCache)).toEqual(['opengles']);
    writeFileSync(join(tmp, 'libvulkan.so.1'), '');
    const env = { LD_LIBRARY_PATH: `/nonexistent:${tmp}`, VK_DRIVER_FILES: join(tmp, 'icd.json') };
    expect(vulkanLoaderPresent(env, noCache)).toBe(true);
    expect(dawnRoutes(false, env, noCache)).toEqual(['default']);
    expect(dawnRoutes(true, env, noCache)).toEqual(['default', 'opengles']);
    expect(dawnRoutes(false, { CTA_DAWN_BACKEND: 'opengles' }, noCache)).toEqual(['opengles']);
    expect(dawnRoutes(true, { CTA_DAWN_BACKEND: 'vulkan' }, noCache)).toEqual(['default']);
    expect(dawnRoutes(true, { CTA_DAWN_BACKEND: 'metal' }, noCache)).toMatch(/^CTA_DAWN_BACKEND: expected vulkan or opengles, got 'metal'$/);
  });

  it('tries Vulkan only where the loader would find a driver manifest', () => {
    const none = { XDG_CONFIG_DIRS: '/nonexistent', XDG_DATA_DIRS: '/nonexistent', XDG_DATA_HOME: '/nonexistent' };
    // (/etc/vulkan/icd.d is always searched: this machine has none, a developer's may.)
    if (!existsSync('/etc/vulkan/icd.d')) {
      expect(vulkanDriverListed(none)).toBe(false);
      writeFileSync(join(tmp, 'libvulkan.so.1'), '');
      expect(dawnRoutes(false, { ...none, LD_LIBRARY_PATH: tmp }, noCache)).toEqual([]);
    }
    expect(vulkanDriverListed({ ...none, VK_ICD_FILENAMES: '/x/nvidia_icd.json' })).toBe(true);
    mkdirSync(join(tmp, 'share', 'vulkan', 'icd.d'), { recursive: true });
    writeFileSync(join(tmp, 'share', 'vulkan', 'icd.d', 'nvidia_icd.json'), '{}');
    expect(vulkanDriverListed({ ...none, XDG_DATA_DIRS: `/nonexistent:${join(tmp, 'share')}` })).toBe(true);
  });

  it('a bad CTA_DAWN_BACKEND is a reason, not a skip, and loads nothing', async () => {
    const r = await startWebGpu(tf, { allowSoftware: true, env: { CTA_DAWN_BACKEND: 'gl' } });
    expect(r).toEqual({ ok: false, unavailable: false, reason: "CTA_DAWN_BACKEND: expected vulkan or opengles, got 'gl'" });
    expect(tf.getBackend()).not.toBe('webgpu');
  });

  it("keeps Mesa's shader cache in the project unless MESA_SHADER_CACHE_DIR is set", () => {
    expect(DEFAULT_SHADER_CACHE).toMatch(/[/\\]\.cache[/\\]mesa-shaders$/);
    const env: NodeJS.ProcessEnv = {};
    const mine = join(tmp, 'my-cache');
    env.MESA_SHADER_CACHE_DIR = mine;
    expect(configureShaderCache(env)).toBe(mine);
    expect(existsSync(mine)).toBe(true);
    const unset: NodeJS.ProcessEnv = {};
    expect(configureShaderCache(unset)).toBe(DEFAULT_SHADER_CACHE);
    expect(unset.MESA_SHADER_CACHE_DIR).toBe(DEFAULT_SHADER_CACHE);
  });
});
