"""The torchvision tensor image operations CoTTA's augmentation uses, re-stated in plain torch.

torchvision is not installed next to Debian's torch here, so this module writes down what its
tensor code path (torchvision 0.11, the version CoTTA's environment pins) computes for float images
in [..., C, H, W] layout, operation by operation (docs/augment.md#operations). Each function works
in the dtype of its input, so the fixture script can run the same reference in float64 (the stored
values) and in float32 (what torchvision itself would give, for the tolerance report).
"""
import math

import torch
import torch.nn.functional as nnf

LUMA = (0.2989, 0.587, 0.114)


def blend(a, b, ratio):
    """ratio*a + (1 - ratio)*b, clipped to [0, 1] (float images)."""
    return (ratio * a + (1.0 - ratio) * b).clamp(0.0, 1.0)


def grayscale(img):
    """Luma [..., 1, H, W] with the ITU-R 601-2 weights."""
    r, g, b = img.unbind(dim=-3)
    return (LUMA[0] * r + LUMA[1] * g + LUMA[2] * b).unsqueeze(-3)


def adjust_brightness(img, factor):
    return blend(img, torch.zeros_like(img), factor)


def adjust_contrast(img, factor):
    """Blend towards the mean luma of each image (mean over C=1, H, W)."""
    mean = grayscale(img).mean(dim=(-3, -2, -1), keepdim=True)
    return blend(img, mean, factor)


def adjust_saturation(img, factor):
    return blend(img, grayscale(img), factor)


def rgb_to_hsv(img):
    """Hue in turns [0, 1), saturation, value. Grey pixels (max == min) get h = s = 0."""
    r, g, b = img.unbind(dim=-3)
    maxc = img.max(dim=-3).values
    minc = img.min(dim=-3).values
    grey = maxc == minc
    chroma = maxc - minc
    ones = torch.ones_like(maxc)
    s = chroma / torch.where(grey, ones, maxc)
    div = torch.where(grey, ones, chroma)
    rc = (maxc - r) / div
    gc = (maxc - g) / div
    bc = (maxc - b) / div
    # The max channel decides the sector; red wins ties, then green.
    h = ((maxc == r) * (bc - gc)
         + ((maxc == g) & (maxc != r)) * (2.0 + rc - bc)
         + ((maxc != g) & (maxc != r)) * (4.0 + gc - rc))
    h = torch.fmod(h / 6.0 + 1.0, 1.0)
    return torch.stack((h, s, maxc), dim=-3)


def hsv_to_rgb(hsv):
    h, s, v = hsv.unbind(dim=-3)
    i = torch.floor(h * 6.0)
    f = h * 6.0 - i
    i = i.to(torch.int64) % 6
    p = (v * (1.0 - s)).clamp(0.0, 1.0)
    q = (v * (1.0 - s * f)).clamp(0.0, 1.0)
    t = (v * (1.0 - s * (1.0 - f))).clamp(0.0, 1.0)
    # For sector k, (R, G, B) is the k-th entry of each of the three tuples.
    table = ((v, q, p, p, t, v), (t, v, v, q, p, p), (p, p, t, v, v, q))
    out = []
    for row in table:
        ch = torch.zeros_like(v)
        for k, cand in enumerate(row):
            ch = torch.where(i == k, cand, ch)
        out.append(ch)
    return torch.stack(out, dim=-3)


def adjust_hue(img, factor):
    assert -0.5 <= factor <= 0.5
    h, s, v = rgb_to_hsv(img).unbind(dim=-3)
    h = torch.remainder(h + factor, 1.0)  # Python-style modulo: negative shifts wrap into [0, 1)
    return hsv_to_rgb(torch.stack((h, s, v), dim=-3))


def adjust_gamma_cotta(img, gamma):
    """CoTTA's jitter step: clamp to [1e-8, 1] first, then x**gamma clipped to [0, 1]."""
    return (img.clamp(1e-8, 1.0) ** gamma).clamp(0.0, 1.0)


JITTER = {
    'brightness': adjust_brightness,
    'contrast': adjust_contrast,
    'saturation': adjust_saturation,
    'hue': adjust_hue,
    'gamma': adjust_gamma_cotta,
}


def pad_edge(img, pad):
    """Repeat the border pixel `pad` times on every side."""
    return nnf.pad(img, [pad, pad, pad, pad], mode='replicate')


def inverse_affine_matrix(angle, translate, scale, shear):
    """Output → input map for the tensor path: coordinates relative to the image centre.
    Rotation·shear (determinant 1) is inverted by its adjugate and divided by the scale; the
    translation is undone before it (post-rotation translation)."""
    rot = math.radians(angle)
    sx, sy = (math.radians(s) for s in shear)
    tx, ty = translate
    a = math.cos(rot - sy) / math.cos(sy)
    b = -math.cos(rot - sy) * math.tan(sx) / math.cos(sy) - math.sin(rot)
    c = math.sin(rot - sy) / math.cos(sy)
    d = -math.sin(rot - sy) * math.tan(sx) / math.cos(sy) + math.cos(rot)
    m = [x / scale for x in (d, -b, 0.0, -c, a, 0.0)]
    m[2] += m[0] * (-tx) + m[1] * (-ty)
    m[5] += m[3] * (-tx) + m[4] * (-ty)
    return m


def affine(img, angle, translate, scale, shear, fill=0.0):
    """Bilinear affine keeping the centre: a grid of output pixel centres (relative to the centre)
    mapped by the inverse matrix, normalised by half the size, sampled with grid_sample
    (align_corners=False, zero padding). A ones channel sampled alongside gives, per pixel, the
    share of its bilinear footprint inside the image; the result is blended towards `fill` by it
    (out*mask + (1 - mask)*fill), which with fill 0 also scales the zero-padded sample by it."""
    n, ch, h, w = img.shape
    dt = img.dtype
    theta = torch.tensor(inverse_affine_matrix(angle, translate, scale, shear), dtype=dt).reshape(1, 2, 3)
    xs = torch.linspace(-w * 0.5 + 0.5, w * 0.5 - 0.5, steps=w, dtype=dt)
    ys = torch.linspace(-h * 0.5 + 0.5, h * 0.5 - 0.5, steps=h, dtype=dt)
    base = torch.empty(1, h, w, 3, dtype=dt)
    base[..., 0] = xs
    base[..., 1] = ys.unsqueeze(-1)
    base[..., 2] = 1.0
    grid = base.view(1, h * w, 3).bmm(theta.transpose(1, 2) / torch.tensor([0.5 * w, 0.5 * h], dtype=dt))
    grid = grid.view(1, h, w, 2).expand(n, h, w, 2)
    with_ones = torch.cat((img, torch.ones(n, 1, h, w, dtype=dt)), dim=1)
    out = nnf.grid_sample(with_ones, grid, mode='bilinear', padding_mode='zeros', align_corners=False)
    mask = out[:, -1:].expand(n, ch, h, w)
    return out[:, :-1] * mask + (1.0 - mask) * fill


def gaussian_kernel1d(size, sigma, dtype):
    half = (size - 1) * 0.5
    x = torch.linspace(-half, half, steps=size, dtype=dtype)
    pdf = torch.exp(-0.5 * (x / sigma).pow(2))
    return pdf / pdf.sum()


def gaussian_blur(img, sigma, size=5):
    """Reflect padding by size//2, then the separable kernel's outer product per channel."""
    k1 = gaussian_kernel1d(size, sigma, img.dtype)
    k2 = torch.mm(k1[:, None], k1[None, :])
    ch = img.shape[-3]
    padded = nnf.pad(img, [size // 2] * 4, mode='reflect')
    return nnf.conv2d(padded, k2.expand(ch, 1, size, size), groups=ch)


def center_crop(img, height, width):
    h, w = img.shape[-2:]
    top = int(round((h - height) / 2.0))
    left = int(round((w - width) / 2.0))
    return img[..., top:top + height, left:left + width]


def hflip(img):
    return img.flip(-1)


def cotta_pipeline(img, params, noise=None):
    """The whole augmentation, step by step on full images (no fusion), with fixed parameters."""
    h, w = img.shape[-2:]
    y = img.clamp(0.0, 1.0)
    for op in params['jitter_order']:
        y = JITTER[op](y, params[op])
    y = pad_edge(y, params['pad'])
    y = affine(y, params['angle'], params['translate'], params['scale'], params['shear'])
    y = gaussian_blur(y, params['blur_sigma'])
    y = center_crop(y, h, w)
    if params['flip']:
        y = hflip(y)
    if noise is not None:
        y = y + noise
    return y.clamp(0.0, 1.0)
