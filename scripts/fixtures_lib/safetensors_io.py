"""Minimal, dependency-free safetensors writer/reader.

Layout: 8-byte little-endian u64 header length N, N bytes of UTF-8 JSON (space-padded so that N is a
multiple of 8), then the raw little-endian C-order tensor data. ``data_offsets`` are relative to the
first byte after the header. Tensors are written in the order given, packed back to back.
"""
import json
import struct

import numpy as np
import torch

_DTYPES = {
    np.dtype('float32'): 'F32',
    np.dtype('float64'): 'F64',
    np.dtype('int64'): 'I64',
    np.dtype('int32'): 'I32',
    np.dtype('uint8'): 'U8',
    np.dtype('bool'): 'BOOL',
}
_NP = {v: k for k, v in _DTYPES.items()}


def _to_numpy(t):
    """Floating tensors become float32, integer tensors int64 (the fixture conventions)."""
    if isinstance(t, torch.Tensor):
        t = t.detach().cpu()
        if t.is_floating_point():
            return t.to(torch.float32).numpy()
        if t.dtype == torch.bool:
            return t.numpy()
        return t.to(torch.int64).numpy()
    a = np.asarray(t)
    if a.dtype.kind == 'f':
        return a.astype(np.float32)
    if a.dtype.kind in 'iu':
        return a.astype(np.int64)
    return a


def save(path, tensors, metadata=None):
    header = {}
    if metadata:
        header['__metadata__'] = {str(k): str(v) for k, v in metadata.items()}
    blobs = []
    offset = 0
    for name, t in tensors.items():
        a = np.array(_to_numpy(t), order="C", copy=True)  # (ascontiguousarray would make 0-d arrays 1-d)
        dt = _DTYPES[a.dtype]
        b = a.astype(a.dtype.newbyteorder('<'), copy=False).tobytes(order='C')
        header[name] = {'dtype': dt, 'shape': list(a.shape), 'data_offsets': [offset, offset + len(b)]}
        blobs.append(b)
        offset += len(b)
    h = json.dumps(header, separators=(',', ':')).encode('utf-8')
    h += b' ' * ((8 - len(h) % 8) % 8)
    with open(path, 'wb') as f:
        f.write(struct.pack('<Q', len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


def load(path):
    """Returns (dict name -> numpy array, metadata dict)."""
    with open(path, 'rb') as f:
        raw = f.read()
    (n,) = struct.unpack('<Q', raw[:8])
    header = json.loads(raw[8:8 + n].decode('utf-8'))
    meta = header.pop('__metadata__', {})
    base = 8 + n
    out = {}
    for name, info in header.items():
        b0, b1 = info['data_offsets']
        dt = _NP[info['dtype']].newbyteorder('<')
        out[name] = np.frombuffer(raw[base + b0:base + b1], dtype=dt).reshape(tuple(info['shape']))
    return out, meta
