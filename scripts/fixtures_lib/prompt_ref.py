"""Float64 plain-PyTorch re-statement of a timm-named ViT with learnable prompts, for the parity
fixtures of src/io/npz.ts / src/models/vit-npz.ts and src/adapters/prompt.ts (docs/prompts.md).

Written from the papers and checked against the behaviour of the official code, not copied from it:

* VPT (Jia et al., ECCV 2022; github:KMnP/vpt, src/models/vit_prompt/vit.py): P prompt tokens are
  inserted right after the class token, after the patch embedding and position embedding (prompts get
  no position embedding). Shallow: only before block 0. Deep: before every block i >= 1 the tokens at
  positions 1..P (the previous block's prompt outputs) are replaced by that block's own prompts.
  Initial values: U(-v, v), v = sqrt(6 / (3 * patch^2 + D)) (VPT's "xavier uniform" for prompts).
* L2P (Wang et al., CVPR 2022; github:google-research/l2p, models/prompt.py + models/vit.py +
  train_continual.py): a pool of M prompts (each Lp tokens) with keys [M, D]. The query is the
  frozen model's [CLS] feature (final LayerNorm, token 0, no prompts). Cosine similarity of the
  L2-normalised keys and query (eps 1e-12 on the squared norm); per sample the top-N keys; with
  batchwise selection (L2P's configs) the N prompt ids chosen most often across the batch (ties: the
  lower id) are used for every sample. The selected prompts are prepended to the whole sequence
  before block 0 (after the position embedding); the classifier reads the class token, now at index
  N * Lp. Pull constraint: reduce_sim = sum_b sum_k <key_norm[idx_bk], query_norm_b> / B, and the
  loss gets - coeff * reduce_sim.
"""
import math

import torch
import torch.nn.functional as F


def layer_norm(x, sd, prefix, eps):
    return F.layer_norm(x, (x.shape[-1],), sd[f'{prefix}.weight'], sd[f'{prefix}.bias'], eps)


def embed(sd, x):
    """x: NCHW, already normalised. Returns [N, 1 + g^2, D] (class token + patches, + pos_embed)."""
    w = sd['patch_embed.proj.weight']
    p = w.shape[-1]
    h = F.conv2d(x, w, sd['patch_embed.proj.bias'], stride=p).flatten(2).transpose(1, 2)
    cls = sd['cls_token'].expand(h.shape[0], -1, -1)
    return torch.cat([cls, h], 1) + sd['pos_embed']


def block(sd, i, h, heads, eps):
    p = f'blocks.{i}'
    n, t, d = h.shape
    hd = d // heads
    y = layer_norm(h, sd, f'{p}.norm1', eps)
    qkv = F.linear(y, sd[f'{p}.attn.qkv.weight'], sd.get(f'{p}.attn.qkv.bias'))
    q, k, v = qkv.reshape(n, t, 3, heads, hd).permute(2, 0, 3, 1, 4)
    a = ((q * hd ** -0.5) @ k.transpose(-2, -1)).softmax(-1)
    o = (a @ v).transpose(1, 2).reshape(n, t, d)
    h = h + F.linear(o, sd[f'{p}.attn.proj.weight'], sd[f'{p}.attn.proj.bias'])
    y = layer_norm(h, sd, f'{p}.norm2', eps)
    y = F.linear(F.gelu(F.linear(y, sd[f'{p}.mlp.fc1.weight'], sd[f'{p}.mlp.fc1.bias'])),
                 sd[f'{p}.mlp.fc2.weight'], sd[f'{p}.mlp.fc2.bias'])
    return h + y


def depth_of(sd):
    return len({k.split('.')[1] for k in sd if k.startswith('blocks.')})


def head(sd, h, cls_index, eps):
    feats = layer_norm(h, sd, 'norm', eps)[:, cls_index]
    return feats, F.linear(feats, sd['head.weight'], sd['head.bias'])


def forward(sd, x, heads, eps=1e-6):
    """Plain ViT: (features = [CLS] after the final LayerNorm, logits)."""
    h = embed(sd, x)
    for i in range(depth_of(sd)):
        h = block(sd, i, h, heads, eps)
    return head(sd, h, 0, eps)


def vpt_init(gen, depth, tokens, dim, patch, deep):
    """VPT's random initialisation: shallow [1, P, D]; deep also [depth - 1, P, D]."""
    v = math.sqrt(6.0 / (3 * patch * patch + dim))
    out = {'prompt.embeddings': (torch.rand((1, tokens, dim), generator=gen, dtype=torch.float64) * 2 - 1) * v}
    if deep:
        out['prompt.deep_embeddings'] = (torch.rand((depth - 1, tokens, dim), generator=gen, dtype=torch.float64) * 2 - 1) * v
    return out


def forward_vpt(sd, x, heads, prompts, eps=1e-6):
    """VPT-shallow / deep (prompts from vpt_init, as tensors that may require grad)."""
    shallow = prompts['prompt.embeddings']
    deep = prompts.get('prompt.deep_embeddings')
    n_tok = shallow.shape[1]
    h = embed(sd, x)
    b = h.shape[0]
    h = torch.cat([h[:, :1], shallow.expand(b, -1, -1), h[:, 1:]], 1)
    for i in range(depth_of(sd)):
        if deep is not None and i >= 1:
            h = torch.cat([h[:, :1], deep[i - 1].expand(b, -1, -1), h[:, 1 + n_tok:]], 1)
        h = block(sd, i, h, heads, eps)
    return head(sd, h, 0, eps)


def l2_normalize(x, eps=1e-12):
    """L2P's l2_normalize: x * rsqrt(max(sum(x^2), eps)) along the last axis."""
    return x * torch.rsqrt(torch.clamp((x * x).sum(-1, keepdim=True), min=eps))


def l2p_select(keys, query, top_n, batchwise=True):
    """Returns (idx [B, N] long, sim [B, M], reduce_sim scalar). Selection is not differentiable."""
    key_norm = l2_normalize(keys)
    q_norm = l2_normalize(query)
    sim = q_norm @ key_norm.t()  # [B, M]
    # per-sample top-N: descending similarity, ties to the lower id (jax.lax.top_k)
    idx_rows = []
    for b in range(sim.shape[0]):
        row = sim[b].detach().tolist()
        order = sorted(range(len(row)), key=lambda m: (-row[m], m))
        idx_rows.append(order[:top_n])
    idx = torch.tensor(idx_rows, dtype=torch.long)
    if batchwise:
        counts = torch.bincount(idx.flatten(), minlength=keys.shape[0]).tolist()
        major = sorted(range(len(counts)), key=lambda m: (-counts[m], m))[:top_n]
        idx = torch.tensor([major] * sim.shape[0], dtype=torch.long)
    chosen = key_norm[idx]  # [B, N, D]
    reduce_sim = (chosen * q_norm[:, None, :]).sum() / query.shape[0]
    return idx, sim, reduce_sim


def forward_l2p(sd, x, heads, keys, pool, top_n, batchwise=True, eps=1e-6):
    """L2P with the prompt pool on the frozen backbone. Returns (features, logits, idx, reduce_sim, query)."""
    with torch.no_grad():
        query, _ = forward(sd, x, heads, eps)
    idx, _, reduce_sim = l2p_select(keys, query, top_n, batchwise)
    b = x.shape[0]
    lp, d = pool.shape[1], pool.shape[2]
    prompts = pool[idx].reshape(b, top_n * lp, d)  # [B, N * Lp, D]
    h = torch.cat([prompts, embed(sd, x)], 1)  # prepended to the whole sequence (L2P)
    for i in range(depth_of(sd)):
        h = block(sd, i, h, heads, eps)
    feats, logits = head(sd, h, top_n * lp, eps)
    return feats, logits, idx, reduce_sim, query


def entropy_mean(z):
    return -(z.softmax(1) * z.log_softmax(1)).sum(1).mean()


# ------------------------------------------------------------------------------------------------
# Google (Flax) ViT layout <-> timm layout, the correspondence of timm's npz loader

def google_to_timm(g, prefix=''):
    """numpy arrays under Google's Flax names -> torch float64 tensors under timm's names."""
    def t(a):
        return torch.from_numpy(a.astype('float64'))
    sd = {}
    sd['cls_token'] = t(g[f'{prefix}cls'])
    sd['pos_embed'] = t(g[f'{prefix}Transformer/posembed_input/pos_embedding'])
    sd['patch_embed.proj.weight'] = t(g[f'{prefix}embedding/kernel']).permute(3, 2, 0, 1).contiguous()
    sd['patch_embed.proj.bias'] = t(g[f'{prefix}embedding/bias'])
    i = 0
    while f'{prefix}Transformer/encoderblock_{i}/LayerNorm_0/scale' in g:
        b = f'{prefix}Transformer/encoderblock_{i}/'
        m = b + 'MultiHeadDotProductAttention_1/'
        p = f'blocks.{i}'
        sd[f'{p}.norm1.weight'] = t(g[b + 'LayerNorm_0/scale'])
        sd[f'{p}.norm1.bias'] = t(g[b + 'LayerNorm_0/bias'])
        sd[f'{p}.attn.qkv.weight'] = torch.cat([t(g[f'{m}{n}/kernel']).flatten(1).t() for n in ('query', 'key', 'value')])
        sd[f'{p}.attn.qkv.bias'] = torch.cat([t(g[f'{m}{n}/bias']).flatten() for n in ('query', 'key', 'value')])
        sd[f'{p}.attn.proj.weight'] = t(g[m + 'out/kernel']).flatten(0, 1).t().contiguous()
        sd[f'{p}.attn.proj.bias'] = t(g[m + 'out/bias'])
        sd[f'{p}.norm2.weight'] = t(g[b + 'LayerNorm_2/scale'])
        sd[f'{p}.norm2.bias'] = t(g[b + 'LayerNorm_2/bias'])
        for r in range(2):
            sd[f'{p}.mlp.fc{r + 1}.weight'] = t(g[f'{b}MlpBlock_3/Dense_{r}/kernel']).t().contiguous()
            sd[f'{p}.mlp.fc{r + 1}.bias'] = t(g[f'{b}MlpBlock_3/Dense_{r}/bias'])
        i += 1
    sd['norm.weight'] = t(g[f'{prefix}Transformer/encoder_norm/scale'])
    sd['norm.bias'] = t(g[f'{prefix}Transformer/encoder_norm/bias'])
    sd['head.weight'] = t(g[f'{prefix}head/kernel']).t().contiguous()
    sd['head.bias'] = t(g[f'{prefix}head/bias'])
    return sd


def google_forward(g, x_nhwc, eps=1e-6):
    """The Flax ViT computed directly in Google's layout (einsum over the head axis), float64 numpy
    arrays in, logits out: an independent check of google_to_timm. x_nhwc is normalised NHWC."""
    def t(a):
        return torch.from_numpy(a.astype('float64'))

    def ln(h, name):
        return F.layer_norm(h, (h.shape[-1],), t(g[f'{name}/scale']), t(g[f'{name}/bias']), eps)
    k = t(g['embedding/kernel'])  # [p, p, 3, D]
    p = k.shape[0]
    x = t(x_nhwc)
    n, hh, ww, _ = x.shape
    patches = x.reshape(n, hh // p, p, ww // p, p, 3).permute(0, 1, 3, 2, 4, 5)  # n, gh, gw, p, p, c
    h = torch.einsum('nabijc,ijcd->nabd', patches, k).reshape(n, -1, k.shape[3]) + t(g['embedding/bias'])
    h = torch.cat([t(g['cls']).expand(n, -1, -1), h], 1) + t(g['Transformer/posembed_input/pos_embedding'])
    i = 0
    while f'Transformer/encoderblock_{i}/LayerNorm_0/scale' in g:
        b = f'Transformer/encoderblock_{i}/'
        m = b + 'MultiHeadDotProductAttention_1/'
        y = ln(h, b + 'LayerNorm_0')
        q, kk, v = (torch.einsum('ntd,dhk->nthk', y, t(g[f'{m}{c}/kernel'])) + t(g[f'{m}{c}/bias']) for c in ('query', 'key', 'value'))
        hd = q.shape[-1]
        a = torch.einsum('nqhk,nshk->nhqs', q / math.sqrt(hd), kk).softmax(-1)
        o = torch.einsum('nhqs,nshk->nqhk', a, v)
        h = h + torch.einsum('nqhk,hkd->nqd', o, t(g[m + 'out/kernel'])) + t(g[m + 'out/bias'])
        y = ln(h, b + 'LayerNorm_2')
        y = F.gelu(y @ t(g[f'{b}MlpBlock_3/Dense_0/kernel']) + t(g[f'{b}MlpBlock_3/Dense_0/bias']))
        h = h + y @ t(g[f'{b}MlpBlock_3/Dense_1/kernel']) + t(g[f'{b}MlpBlock_3/Dense_1/bias'])
        i += 1
    h = ln(h, 'Transformer/encoder_norm')
    return h[:, 0] @ t(g['head/kernel']) + t(g['head/bias'])
