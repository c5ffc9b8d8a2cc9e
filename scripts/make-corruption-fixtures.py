#!/usr/bin/python3
"""Reference outputs of the CIFAR-10-C corruptions for the TypeScript parity tests
(src/data/corruptions/parity.test.ts).

Run with Debian's Python, which sees the reference libraries:
    apt-get install -y python3-scipy python3-skimage python3-opencv python3-pil python3-wand imagemagick
    /usr/bin/python3 scripts/make-corruption-fixtures.py [--out test/fixtures/corruptions]

The corruption formulas are re-implemented here from Hendrycks & Dietterich's make_cifar_c.py
(parameters as in docs/data-formats.md#corruption-parameters) with the same library calls: numpy, scipy.ndimage,
skimage.filters.gaussian / skimage.color, cv2 (filter2D, GaussianBlur, warpAffine, Canny, ...),
PIL (BOX resize, JPEG) and ImageMagick through Wand (motion blur, snow). Random corruptions take their
draws from arrays that are saved next to the outputs, so the TypeScript side can be fed the very same
draws ("equal draws" parity). Draws are rounded to float32 (uniforms to multiples of 2^-16) before use
so that storing them as float32 / uint16 loses nothing.

Inputs: four 32x32 natural images made from scikit-image's bundled sample photos (astronaut, chelsea,
coffee, rocket: public-domain / CC0 images shipped in skimage.data), centre-cropped to a square and
reduced with PIL's BOX filter, plus one 72x72 crop for a few ImageNet-table checks.

Output: manifest.json (what is where) + data.bin.gz (all arrays concatenated, little-endian).
Deterministic: running the script twice gives identical files (fixed seeds, gzip mtime 0).
"""
import argparse
import ctypes
import gzip
import io
import json
import math
import os

import numpy as np
import cv2
import skimage
import skimage.data
import skimage.color
import skimage.util
from skimage.filters import gaussian
from scipy.ndimage import zoom as scizoom
from scipy.ndimage import map_coordinates
from PIL import Image

try:
    from wand.image import Image as WandImage
    from wand.api import library as wandlibrary
    wandlibrary.MagickMotionBlurImage.argtypes = (ctypes.c_void_p, ctypes.c_double, ctypes.c_double, ctypes.c_double)
    HAVE_WAND = True
except Exception:  # pragma: no cover - ImageMagick missing
    HAVE_WAND = False

import warnings
warnings.simplefilter('ignore')

CIFAR = dict(
    gaussian_noise=[.04, .06, .08, .09, .10],
    shot_noise=[500, 250, 100, 75, 50],
    impulse_noise=[.01, .02, .03, .05, .07],
    speckle_noise=[.06, .1, .12, .16, .2],
    gaussian_blur=[.4, .6, .7, .8, 1],
    glass_blur=[(0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2)],
    defocus_blur=[(0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)],
    motion_blur=[(6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5)],
    zoom_blur=[(1, 1.06, 0.01), (1, 1.11, 0.01), (1, 1.16, 0.01), (1, 1.21, 0.01), (1, 1.26, 0.01)],
    snow=[(0.1, 0.2, 1, 0.6, 8, 3, 0.95), (0.1, 0.2, 1, 0.5, 10, 4, 0.9), (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9),
          (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85), (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8)],
    fog=[(.2, 3), (.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75)],
    brightness=[.05, .1, .15, .2, .3],
    contrast=[.75, .5, .4, .3, 0.15],
    elastic_transform=[(32 * 0, 32 * 0, 32 * 0.08), (32 * 0.05, 32 * 0.2, 32 * 0.07), (32 * 0.08, 32 * 0.06, 32 * 0.06),
                       (32 * 0.1, 32 * 0.04, 32 * 0.05), (32 * 0.1, 32 * 0.03, 32 * 0.03)],
    pixelate=[0.95, 0.9, 0.85, 0.75, 0.65],
    jpeg_compression=[80, 65, 58, 50, 40],
    spatter=[(0.62, 0.1, 0.7, 0.7, 0.5, 0), (0.65, 0.1, 0.8, 0.7, 0.5, 0), (0.65, 0.3, 1, 0.69, 0.5, 0),
             (0.65, 0.1, 0.7, 0.69, 0.6, 1), (0.65, 0.1, 0.5, 0.68, 0.6, 1)],
    saturate=[(0.3, 0), (0.1, 0), (1.5, 0), (2, 0.1), (2.5, 0.2)],
)
IMAGENET = dict(
    gaussian_blur=[1, 2, 3, 4, 6],
    defocus_blur=[(3, 0.1), (4, 0.5), (6, 0.5), (8, 0.5), (10, 0.5)],
    zoom_blur=[(1, 1.11, 0.01), (1, 1.16, 0.01), (1, 1.21, 0.02), (1, 1.26, 0.02), (1, 1.31, 0.03)],
    pixelate=[0.6, 0.5, 0.4, 0.3, 0.25],
)


# ---------------------------------------------------------------------------------------------
# helpers (same library calls as the generator)

def disk(radius, alias_blur):
    half = np.arange(-8, 8 + 1) if radius <= 8 else np.arange(-radius, radius + 1)
    ksize = (3, 3) if radius <= 8 else (5, 5)
    X, Y = np.meshgrid(half, half)
    k = np.array((X ** 2 + Y ** 2) <= radius ** 2, dtype=np.float32)
    k /= np.sum(k)
    return cv2.GaussianBlur(k, ksize=ksize, sigmaX=alias_blur)


def clipped_zoom(img, z):
    h = img.shape[0]
    ch = int(np.ceil(h / z))
    top = (h - ch) // 2
    out = scizoom(img[top:top + ch, top:top + ch], (z, z, 1), order=1)
    t = (out.shape[0] - h) // 2
    return out[t:t + h, t:t + h]


def wand_motion_blur_png(png_bytes, radius, sigma, angle):
    im = WandImage(blob=png_bytes)
    wandlibrary.MagickMotionBlurImage(im.wand, radius, sigma, angle)
    return cv2.imdecode(np.frombuffer(im.make_blob(), np.uint8), cv2.IMREAD_UNCHANGED)


def png_of(arr, mode=None):
    b = io.BytesIO()
    Image.fromarray(arr, mode=mode).save(b, format='PNG')
    return b.getvalue()


def plasma(mapsize, wibbledecay, u):
    """diamond-square as in the generator, uniforms taken from the iterator u"""
    m = np.empty((mapsize, mapsize), dtype=np.float64)
    m[0, 0] = 0
    step = mapsize
    wib = [100.0]

    def wmean(a):
        draws = np.array([next(u) for _ in range(a.size)]).reshape(a.shape)
        return a / 4 + wib[0] * (-wib[0] + (wib[0] - -wib[0]) * draws)

    while step >= 2:
        corner = m[0:mapsize:step, 0:mapsize:step]
        sq = corner + np.roll(corner, shift=-1, axis=0)
        sq += np.roll(sq, shift=-1, axis=1)
        m[step // 2:mapsize:step, step // 2:mapsize:step] = wmean(sq)
        dr = m[step // 2:mapsize:step, step // 2:mapsize:step]
        ul = m[0:mapsize:step, 0:mapsize:step]
        lt = (dr + np.roll(dr, 1, axis=0)) + (ul + np.roll(ul, -1, axis=1))
        m[0:mapsize:step, step // 2:mapsize:step] = wmean(lt)
        tt = (dr + np.roll(dr, 1, axis=1)) + (ul + np.roll(ul, -1, axis=0))
        m[step // 2:mapsize:step, 0:mapsize:step] = wmean(tt)
        step //= 2
        wib[0] /= wibbledecay
    m -= m.min()
    return m / m.max()


# ---------------------------------------------------------------------------------------------
# corruptions (uint8 HWC in, uint8 HWC out: np.uint8 of the float result, as the script stores it)

def u8(v):
    return np.uint8(v)


def f_gaussian_noise(x, c, z):
    x = x / 255.
    return u8(np.clip(x + z * c, 0, 1) * 255)


def f_speckle_noise(x, c, z):
    x = x / 255.
    return u8(np.clip(x + x * (z * c), 0, 1) * 255)


def f_impulse_noise(x, amount, u1, u2):
    # skimage random_noise(mode='s&p', amount): flipped = U <= amount, salted = U <= 0.5
    x = x / 255.
    out = x.copy()
    flipped = u1 <= amount
    salted = u2 <= 0.5
    out[flipped & salted] = 1
    out[flipped & ~salted] = 0
    return u8(np.clip(out, 0, 1) * 255)


def f_shot_noise(x, c, k):
    return u8(np.clip(k / c, 0, 1) * 255)


def f_gaussian_blur(x, c):
    return u8(np.clip(gaussian(x / 255., sigma=c, channel_axis=-1), 0, 1) * 255)


def f_glass_blur(x, c, offs):
    H, W = x.shape[:2]
    x = np.uint8(gaussian(x / 255., sigma=c[0], channel_axis=-1) * 255)
    k = 0
    for _ in range(c[2]):
        for h in range(H - c[1], c[1], -1):
            for w in range(W - c[1], c[1], -1):
                dx, dy = int(offs[k]), int(offs[k + 1])
                k += 2
                hp, wp = h + dy, w + dx
                x[h, w], x[hp, wp] = x[hp, wp], x[h, w]  # views: a copy, as in the generator
    return u8(np.clip(gaussian(x / 255., sigma=c[0], channel_axis=-1), 0, 1) * 255)


def f_defocus_blur(x, c):
    x = x / 255.
    k = disk(c[0], c[1])
    ch = np.array([cv2.filter2D(x[:, :, d], -1, k) for d in range(3)]).transpose((1, 2, 0))
    return u8(np.clip(ch, 0, 1) * 255)


def f_motion_blur(x, c, angle):
    y = wand_motion_blur_png(png_of(x), c[0], c[1], angle)
    if y.ndim == 3:
        return u8(np.clip(y[..., [2, 1, 0]], 0, 255))
    return u8(np.clip(np.stack([y, y, y], axis=-1), 0, 255))


def f_zoom_blur(x, c):
    zs = np.arange(*c)
    x = (x / 255.).astype(np.float32)
    out = np.zeros_like(x)
    for z in zs:
        out += clipped_zoom(x, z)
    return u8(np.clip((x + out) / (len(zs) + 1), 0, 1) * 255)


def f_snow(x, c, z, angle):
    H, W = x.shape[:2]
    x = np.array(x, dtype=np.float32) / 255.
    layer = c[0] + c[1] * z.reshape(H, W)
    layer = clipped_zoom(layer[..., np.newaxis], c[2])
    layer[layer < c[3]] = 0
    L = (np.clip(layer.squeeze(), 0, 1) * 255).astype(np.uint8)
    layer = wand_motion_blur_png(png_of(L, mode='L'), c[4], c[5], angle) / 255.
    layer = layer[..., np.newaxis]
    gray = cv2.cvtColor(x, cv2.COLOR_RGB2GRAY).reshape(H, W, 1)
    x = c[6] * x + (1 - c[6]) * np.maximum(x, gray * 1.5 + 0.5)
    return u8(np.clip(x + layer + np.rot90(layer, k=2), 0, 1) * 255)


def f_fog(x, c, u):
    H, W = x.shape[:2]
    x = x / 255.
    mx = x.max()
    x += c[0] * plasma(32, c[1], iter(u))[:H, :W][..., np.newaxis]
    return u8(np.clip(x * mx / (mx + c[0]), 0, 1) * 255)


def f_brightness(x, c):
    x = skimage.color.rgb2hsv(x / 255.)
    x[:, :, 2] = np.clip(x[:, :, 2] + c, 0, 1)
    return u8(np.clip(skimage.color.hsv2rgb(x), 0, 1) * 255)


def f_saturate(x, c):
    x = skimage.color.rgb2hsv(x / 255.)
    x[:, :, 1] = np.clip(x[:, :, 1] * c[0] + c[1], 0, 1)
    return u8(np.clip(skimage.color.hsv2rgb(x), 0, 1) * 255)


def f_contrast(x, c):
    x = x / 255.
    m = np.mean(x, axis=(0, 1), keepdims=True)
    return u8(np.clip((x - m) * c + m, 0, 1) * 255)


def f_elastic(x, c, jit, ux, uy):
    img = np.array(x, dtype=np.float32) / 255.
    shape = img.shape
    ss = shape[:2]
    cs = np.float32(ss) // 2
    sq = min(ss) // 3
    pts1 = np.float32([cs + sq, [cs[0] + sq, cs[1] - sq], cs - sq])
    pts2 = pts1 + (-c[2] + (c[2] - -c[2]) * jit.reshape(3, 2)).astype(np.float32)
    M = cv2.getAffineTransform(pts1, pts2)
    img = cv2.warpAffine(img, M, ss[::-1], borderMode=cv2.BORDER_REFLECT_101)
    dx = (gaussian(-1 + 2 * ux.reshape(ss), c[1], mode='reflect', truncate=3) * c[0]).astype(np.float32)
    dy = (gaussian(-1 + 2 * uy.reshape(ss), c[1], mode='reflect', truncate=3) * c[0]).astype(np.float32)
    dx, dy = dx[..., np.newaxis], dy[..., np.newaxis]
    gx, gy, gz = np.meshgrid(np.arange(shape[1]), np.arange(shape[0]), np.arange(shape[2]))
    ind = np.reshape(gy + dy, (-1, 1)), np.reshape(gx + dx, (-1, 1)), np.reshape(gz, (-1, 1))
    return u8(np.clip(map_coordinates(img, ind, order=1, mode='reflect').reshape(shape), 0, 1) * 255)


def f_pixelate(x, c):
    H, W = x.shape[:2]
    im = Image.fromarray(x)
    im = im.resize((int(W * c), int(H * c)), Image.BOX).resize((W, H), Image.BOX)
    return np.asarray(im).copy()


def f_jpeg(x, q):
    b = io.BytesIO()
    Image.fromarray(x).save(b, 'JPEG', quality=q)
    return np.asarray(Image.open(io.BytesIO(b.getvalue())).convert('RGB')).copy()


def f_spatter(x, c, z):
    H, W = x.shape[:2]
    x = np.array(x, dtype=np.float32) / 255.
    liquid = c[0] + c[1] * z.reshape(H, W)
    liquid = gaussian(liquid, sigma=c[2])
    liquid[liquid < c[3]] = 0
    if c[5] == 0:
        liquid = (liquid * 255).astype(np.uint8)
        dist = 255 - cv2.Canny(liquid, 50, 150)
        dist = cv2.distanceTransform(dist, cv2.DIST_L2, 5)
        _, dist = cv2.threshold(dist, 20, 20, cv2.THRESH_TRUNC)
        dist = cv2.blur(dist, (3, 3)).astype(np.uint8)
        dist = cv2.equalizeHist(dist)
        ker = np.array([[-2, -1, 0], [-1, 1, 1], [0, 1, 2]])
        dist = cv2.filter2D(dist, cv2.CV_8U, ker)
        dist = cv2.blur(dist, (3, 3)).astype(np.float32)
        m = cv2.cvtColor(liquid * dist, cv2.COLOR_GRAY2BGRA)
        m /= np.max(m, axis=(0, 1))
        m *= c[4]
        color = np.concatenate((175 / 255. * np.ones_like(m[..., :1]), 238 / 255. * np.ones_like(m[..., :1]),
                                238 / 255. * np.ones_like(m[..., :1])), axis=2)
        color = cv2.cvtColor(color, cv2.COLOR_BGR2BGRA)
        x = cv2.cvtColor(x, cv2.COLOR_BGR2BGRA)
        return u8(cv2.cvtColor(np.clip(x + m * color, 0, 1), cv2.COLOR_BGRA2BGR) * 255)
    m = np.where(liquid > c[3], 1, 0)
    m = gaussian(m.astype(np.float32), sigma=c[4])
    m[m < 0.8] = 0
    color = np.concatenate((63 / 255. * np.ones_like(x[..., :1]), 42 / 255. * np.ones_like(x[..., :1]),
                            20 / 255. * np.ones_like(x[..., :1])), axis=2)
    color *= m[..., np.newaxis]
    x *= (1 - m[..., np.newaxis])
    return u8(np.clip(x + color, 0, 1) * 255)


# ---------------------------------------------------------------------------------------------

def load_images():
    srcs = [('astronaut', skimage.data.astronaut()), ('chelsea', skimage.data.chelsea()),
            ('coffee', skimage.data.coffee()), ('rocket', skimage.data.rocket())]
    out = []
    for name, a in srcs:
        h, w = a.shape[:2]
        s = min(h, w)
        crop = a[(h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s, :3]
        out.append((name, np.asarray(Image.fromarray(crop).resize((32, 32), Image.BOX)).copy()))
    a = skimage.data.chelsea()
    big = np.asarray(Image.fromarray(a[:, 50:50 + a.shape[0], :3]).resize((72, 72), Image.BOX)).copy()
    return out, big


class Writer:
    def __init__(self):
        self.buf = bytearray()
        self.entries = []

    def add(self, arr, **meta):
        arr = np.ascontiguousarray(arr)
        dt = {np.dtype(np.uint8): 'uint8', np.dtype(np.int8): 'int8', np.dtype(np.uint16): 'uint16',
              np.dtype(np.float32): 'float32'}[arr.dtype]
        while len(self.buf) % 4:
            self.buf.append(0)
        off = len(self.buf)
        self.buf += arr.astype(arr.dtype.newbyteorder('<')).tobytes()
        key = len(self.entries)
        self.entries.append(dict(meta, offset=off, dtype=dt, shape=list(arr.shape)))
        return key


def random_corruptions(wr, rng, images, img_ids, out, only):
    """the other random corruptions at equal draws"""
    # image 2 (glass, fog, elastic, spatter) and 1 (motion, snow), or image `only` for all of them
    ia, ib = (2, 1) if only is None else (only, only)
    x = images[ia][1]
    for s in range(1, 6):
        c = CIFAR['glass_blur'][s - 1]
        n = c[2] * (32 - 2 * c[1]) ** 2
        offs = rng.integers(-c[1], c[1], 2 * n).astype(np.int8)
        oid = wr.add(offs, kind='draws', what='offsets', image=img_ids[ia])
        out(f_glass_blur(x, c, offs), 'glass_blur', s, img_ids[ia], draws=[oid])
    nplasma = sum(3 * (32 // st) ** 2 for st in (32, 16, 8, 4, 2))
    u = (rng.integers(0, 65536, nplasma) / 65536.)
    uid = wr.add((u * 65536).astype(np.uint16), kind='draws', what='u16', image=img_ids[ia])
    for s in range(1, 6):
        out(f_fog(x, CIFAR['fog'][s - 1], u), 'fog', s, img_ids[ia], draws=[uid])
    jit = rng.integers(0, 65536, 6) / 65536.
    ux = rng.integers(0, 65536, (32, 32)) / 65536.
    uy = rng.integers(0, 65536, (32, 32)) / 65536.
    ids = [wr.add((a * 65536).astype(np.uint16), kind='draws', what='u16', image=img_ids[ia]) for a in (jit, ux, uy)]
    for s in range(1, 6):
        out(f_elastic(x, CIFAR['elastic_transform'][s - 1], jit, ux, uy), 'elastic_transform', s, img_ids[ia], draws=ids)
    zs = rng.standard_normal((32, 32)).astype(np.float32)
    zsid = wr.add(zs, kind='draws', what='normal', image=img_ids[ia])
    for s in range(1, 6):
        out(f_spatter(x, CIFAR['spatter'][s - 1], zs.astype(np.float64)), 'spatter', s, img_ids[ia], draws=[zsid])

    if HAVE_WAND:
        x = images[ib][1]
        for s in range(1, 6):
            angle = float(np.float32(rng.uniform(-45, 45)))
            out(f_motion_blur(x, CIFAR['motion_blur'][s - 1], angle), 'motion_blur', s, img_ids[ib], angle=angle)
        zn = rng.standard_normal((32, 32)).astype(np.float32)
        znid = wr.add(zn, kind='draws', what='normal', image=img_ids[ib])
        for s in range(1, 6):
            angle = float(np.float32(rng.uniform(-135, -45)))
            out(f_snow(x, CIFAR['snow'][s - 1], zn.astype(np.float64), angle), 'snow', s, img_ids[ib], draws=[znid],
                angle=angle)



def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--out', default=os.path.join(os.path.dirname(__file__), '..', 'test', 'fixtures', 'corruptions'))
    ap.add_argument('--extended', type=int, default=0, metavar='N',
                    help='stress mode (not for the repo): N extra random 32x32 crops, every corruption on every image; '
                         'point the parity test at it with CORRUPTION_FIXTURES_DIR=<out>')
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    rng = np.random.default_rng(20240601)

    images, big = load_images()
    if args.extended:
        photos = [skimage.data.astronaut(), skimage.data.chelsea(), skimage.data.coffee(), skimage.data.rocket(),
                  skimage.data.retina(), skimage.data.hubble_deep_field(), skimage.data.immunohistochemistry()]
        for k in range(args.extended):
            a = photos[k % len(photos)][..., :3]
            s = int(rng.integers(32, min(a.shape[:2]) + 1))
            y0 = int(rng.integers(0, a.shape[0] - s + 1))
            x0 = int(rng.integers(0, a.shape[1] - s + 1))
            im = np.asarray(Image.fromarray(a[y0:y0 + s, x0:x0 + s]).resize((32, 32), Image.BOX)).copy()
            if k % 5 == 4:  # saturated patches exercise the clipping paths
                im[:8] = 255
                im[-6:, :10] = 0
            images.append((f'extra{k}', im))
    wr = Writer()
    img_ids = [wr.add(a, kind='image', image=name) for name, a in images]
    big_id = wr.add(big, kind='image', image='chelsea72')

    def out(arr, name, sev, image, **extra):
        assert arr.dtype == np.uint8 and arr.shape == images[0][1].shape or arr.shape == big.shape
        wr.add(arr, kind='output', name=name, severity=sev, image=image, **extra)

    # deterministic corruptions: images 0 and 1 (JPEG: all four), all severities
    det = dict(defocus_blur=f_defocus_blur, zoom_blur=f_zoom_blur, gaussian_blur=f_gaussian_blur,
               contrast=f_contrast, brightness=f_brightness, saturate=f_saturate, pixelate=f_pixelate,
               jpeg_compression=f_jpeg)
    for name, fn in det.items():
        for i in (range(len(images)) if args.extended or name == 'jpeg_compression' else range(2)):
            for s in range(1, 6):
                out(fn(images[i][1], CIFAR[name][s - 1]), name, s, img_ids[i])
    # ImageNet-table checks on the 72x72 image
    for name, sevs in [('defocus_blur', [1, 5]), ('zoom_blur', [5]), ('gaussian_blur', [2]), ('pixelate', [5])]:
        for s in sevs:
            out(det[name](big, IMAGENET[name][s - 1]), name, s, big_id, table='imagenet')

    # noise at equal draws: images 0 and 3
    for i in (range(len(images)) if args.extended else (0, 3)):
        x = images[i][1]
        z = rng.standard_normal(x.shape).astype(np.float32)
        zid = wr.add(z, kind='draws', what='normal', image=img_ids[i])
        u1 = (rng.integers(0, 65536, x.shape) / 65536.)
        u2 = (rng.integers(0, 65536, x.shape) / 65536.)
        u1id = wr.add((u1 * 65536).astype(np.uint16), kind='draws', what='u16', image=img_ids[i])
        u2id = wr.add((u2 * 65536).astype(np.uint16), kind='draws', what='u16', image=img_ids[i])
        for s in range(1, 6):
            out(f_gaussian_noise(x, CIFAR['gaussian_noise'][s - 1], z.astype(np.float64)), 'gaussian_noise', s,
                img_ids[i], draws=[zid])
            out(f_speckle_noise(x, CIFAR['speckle_noise'][s - 1], z.astype(np.float64)), 'speckle_noise', s,
                img_ids[i], draws=[zid])
            out(f_impulse_noise(x, CIFAR['impulse_noise'][s - 1], u1, u2), 'impulse_noise', s, img_ids[i],
                draws=[u1id, u2id])
    for i in (range(len(images)) if args.extended else (1,)):
        x = images[i][1]
        for s in ((1, 2, 3, 4, 5) if args.extended else (1, 5)):
            c = CIFAR['shot_noise'][s - 1]
            k = rng.poisson(x / 255. * c)
            kid = wr.add(k.astype(np.uint16), kind='draws', what='counts', image=img_ids[i])
            out(f_shot_noise(x, c, k), 'shot_noise', s, img_ids[i], draws=[kid])

    for i in (range(len(images)) if args.extended else (None,)):
        random_corruptions(wr, rng, images, img_ids, out, i)

    zoom_lists = dict(cifar=[np.arange(*a).tolist() for a in CIFAR['zoom_blur']],
                      imagenet=[np.arange(*a).tolist() for a in IMAGENET['zoom_blur']])
    manifest = dict(
        generator='scripts/make-corruption-fixtures.py',
        versions=dict(numpy=np.__version__, scipy=__import__('scipy').__version__, skimage=skimage.__version__,
                      opencv=cv2.__version__, pillow=Image.__version__,
                      imagemagick=(__import__('wand.version').version.MAGICK_VERSION if HAVE_WAND else None)),
        zoom_factors=zoom_lists,
        entries=wr.entries,
    )
    with open(os.path.join(args.out, 'manifest.json'), 'w') as f:
        json.dump(manifest, f, separators=(',', ':'))
        f.write('\n')
    with open(os.path.join(args.out, 'data.bin.gz'), 'wb') as f:
        with gzip.GzipFile(fileobj=f, mode='wb', compresslevel=9, mtime=0, filename='') as g:
            g.write(bytes(wr.buf))
    tot = sum(os.path.getsize(os.path.join(args.out, p)) for p in os.listdir(args.out))
    print(f'{len(wr.entries)} arrays, {len(wr.buf)} bytes raw, {tot} bytes on disk in {args.out}')


if __name__ == '__main__':
    main()
