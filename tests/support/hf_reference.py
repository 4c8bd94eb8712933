"""Meta-layout weights loaded into Hugging Face transformers' LlamaForCausalLM, the external reference.

Importing this skips the importing test module where transformers is not installed.
"""

import pytest
import torch

transformers = pytest.importorskip("transformers")


def permute_for_hf(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Meta rotates adjacent pairs, HF rotates halves: reorder each head's rows to compensate."""
    rows, cols = w.shape
    return w.view(n_heads, rows // n_heads // 2, 2, cols).transpose(1, 2).reshape(rows, cols)


def rope_parameters(args) -> dict:
    rope = {"rope_type": "default", "rope_theta": args.rope_theta}
    if args.use_scaled_rope:  # Meta's Llama 3.1 scaling, in transformers' words
        rope.update(
            rope_type="llama3",
            factor=args.rope_scaling,
            low_freq_factor=1.0,
            high_freq_factor=4.0,
            original_max_position_embeddings=8192,
        )
    return rope


def to_hf(state, args, max_seq_len):
    kv = args.kv_heads
    config = transformers.LlamaConfig(
        vocab_size=args.vocab_size,
        hidden_size=args.dim,
        intermediate_size=args.ffn_hidden_dim,
        num_hidden_layers=args.n_layers,
        num_attention_heads=args.n_heads,
        num_key_value_heads=kv,
        rms_norm_eps=args.norm_eps,
        max_position_embeddings=2 * max_seq_len,
        tie_word_embeddings=False,
        rope_theta=args.rope_theta,
        rope_parameters=rope_parameters(args),
        attention_bias=False,
        mlp_bias=False,
        torch_dtype="float32",
    )
    hf = {
        "model.embed_tokens.weight": state["tok_embeddings.weight"],
        "model.norm.weight": state["norm.weight"],
        "lm_head.weight": state["output.weight"],
    }
    names = {
        "attention.wo": "self_attn.o_proj",
        "attention.wv": "self_attn.v_proj",
        "feed_forward.w1": "mlp.gate_proj",
        "feed_forward.w2": "mlp.down_proj",
        "feed_forward.w3": "mlp.up_proj",
        "attention_norm": "input_layernorm",
        "ffn_norm": "post_attention_layernorm",
    }
    for i in range(args.n_layers):
        src, dst = f"layers.{i}.", f"model.layers.{i}."
        hf[dst + "self_attn.q_proj.weight"] = permute_for_hf(state[src + "attention.wq.weight"], args.n_heads)
        hf[dst + "self_attn.k_proj.weight"] = permute_for_hf(state[src + "attention.wk.weight"], kv)
        for meta, name in names.items():
            hf[dst + name + ".weight"] = state[src + meta + ".weight"]
    model = transformers.LlamaForCausalLM(config).eval()
    model.config._attn_implementation = "eager"
    model.load_state_dict(hf, strict=True)
    return model
