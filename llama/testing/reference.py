"""Meta's Llama 2 reference model and decode loop, restated independently: the oracle for llama.model and generation.

The reference is Meta's `meta-llama/llama` (`llama/model.py` and `llama/generation.py`). Written
from the spec with plain tensors and the reference's COMPLEX rotary embedding, so that
llama.model's real-valued form and llama.generation's loop are checked against something that
shares none of their code. Single process, full (unsharded) weights. Used by the tests and by
benchmarks/bench_reference.py.
"""

import math

import torch
import torch.nn.functional as F


def rms(x, w, eps):
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).type_as(x) * w


def freqs_cis(head_dim, end, theta):
    inv = 1.0 / (theta ** (torch.arange(0, head_dim, 2)[: head_dim // 2].float() / head_dim))
    angles = torch.outer(torch.arange(end).float(), inv)
    return torch.polar(torch.ones_like(angles), angles)  # complex64


def rotate(x, fc):
    xc = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))
    return torch.view_as_real(xc * fc[None, :, None, :]).flatten(3).type_as(x)


class RefModel:
    def __init__(self, state, args, max_batch_size, max_seq_len):
        self.s, self.a = state, args
        self.hd = args.dim // args.n_heads
        self.kvh = args.n_kv_heads or args.n_heads
        self.fc = freqs_cis(self.hd, 2 * max_seq_len, args.rope_theta)
        shape = (max_batch_size, max_seq_len, self.kvh, self.hd)
        self.ck = [torch.zeros(shape) for _ in range(args.n_layers)]
        self.cv = [torch.zeros(shape) for _ in range(args.n_layers)]

    def attention(self, i, x, start, fc, mask):
        s, p = self.s, f"layers.{i}.attention."
        b, n, _ = x.shape
        q = (x @ s[p + "wq.weight"].T).view(b, n, self.a.n_heads, self.hd)
        k = (x @ s[p + "wk.weight"].T).view(b, n, self.kvh, self.hd)
        v = (x @ s[p + "wv.weight"].T).view(b, n, self.kvh, self.hd)
        q, k = rotate(q, fc), rotate(k, fc)
        self.ck[i][:b, start : start + n] = k
        self.cv[i][:b, start : start + n] = v
        rep = self.a.n_heads // self.kvh
        keys = torch.repeat_interleave(self.ck[i][:b, : start + n], rep, dim=2).transpose(1, 2)
        vals = torch.repeat_interleave(self.cv[i][:b, : start + n], rep, dim=2).transpose(1, 2)
        scores = q.transpose(1, 2) @ keys.transpose(2, 3) / math.sqrt(self.hd)
        if mask is not None:
            scores = scores + mask
        out = F.softmax(scores.float(), dim=-1).type_as(q) @ vals
        return out.transpose(1, 2).reshape(b, n, -1) @ s[p + "wo.weight"].T

    def forward(self, tokens, start):
        s, a = self.s, self.a
        n = tokens.shape[1]
        h = s["tok_embeddings.weight"][tokens]
        fc = self.fc[start : start + n]
        mask = None
        if n > 1:
            mask = torch.full((n, start + n), float("-inf"))
            for qi in range(n):
                mask[qi, : start + qi + 1] = 0.0
        for i in range(a.n_layers):
            p = f"layers.{i}."
            h = h + self.attention(i, rms(h, s[p + "attention_norm.weight"], a.norm_eps), start, fc, mask)
            x = rms(h, s[p + "ffn_norm.weight"], a.norm_eps)
            f = p + "feed_forward."
            h = h + (F.silu(x @ s[f + "w1.weight"].T) * (x @ s[f + "w3.weight"].T)) @ s[f + "w2.weight"].T
        return (rms(h, s["norm.weight"], a.norm_eps) @ s["output.weight"].T).float()


def ref_top_p(probs, p):
    order = torch.sort(probs, dim=-1, descending=True)
    cum = torch.cumsum(order.values, dim=-1)
    kept = torch.where(cum - order.values > p, torch.zeros_like(order.values), order.values)
    kept = kept / kept.sum(dim=-1, keepdim=True)
    return torch.gather(order.indices, -1, torch.multinomial(kept, 1))


def ref_generate(
    model, prompts, max_gen_len, max_seq_len, pad_id, eos_id, temperature=0.0, top_p=0.9, logprobs=False, echo=False
):
    """The reference decode loop, restated (including its prompt-fills-everything logprob bug: NOT fixed here).

    eos_id: Llama 2's eos id, or a list of Llama 3's stop tokens (a row stops at any; output cut at the first).
    """
    stops = torch.tensor(eos_id if isinstance(eos_id, list) else [eos_id])
    bsz = len(prompts)
    lens = [len(t) for t in prompts]
    total = min(max_seq_len, max_gen_len + max(lens))
    tokens = torch.full((bsz, total), pad_id, dtype=torch.long)
    for k, t in enumerate(prompts):
        tokens[k, : len(t)] = torch.tensor(t)
    lp = torch.zeros_like(tokens, dtype=torch.float)
    is_prompt = tokens != pad_id
    done = torch.zeros(bsz, dtype=torch.bool)
    prev = 0
    for cur in range(min(lens), total):
        logits = model.forward(tokens[:, prev:cur], prev)
        if temperature > 0:
            nxt = ref_top_p(torch.softmax(logits[:, -1] / temperature, dim=-1), top_p).reshape(-1)
        else:
            nxt = torch.argmax(logits[:, -1], dim=-1)
        nxt = torch.where(is_prompt[:, cur], tokens[:, cur], nxt)
        tokens[:, cur] = nxt
        lp[:, prev + 1 : cur + 1] = -F.cross_entropy(
            logits.transpose(1, 2), tokens[:, prev + 1 : cur + 1], reduction="none", ignore_index=pad_id
        )
        done |= (~is_prompt[:, cur]) & torch.isin(nxt, stops)
        prev = cur
        if done.all():
            break
    out, out_lp = [], []
    for i, row in enumerate(tokens.tolist()):
        start = 0 if echo else lens[i]
        row = row[start : lens[i] + max_gen_len]
        rlp = lp[i].tolist()[start : lens[i] + max_gen_len]
        cut = next((j for j, t in enumerate(row) if t in stops.tolist()), len(row))
        row, rlp = row[:cut], rlp[:cut]
        out.append(row)
        out_lp.append(rlp)
    return out, (out_lp if logprobs else None)
