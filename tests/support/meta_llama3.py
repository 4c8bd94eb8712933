"""Meta's own Llama 3 transformer (`llama_models.llama3.model`, from the llama-models wheel of
meta-llama/llama-models) with given weights: the oracle several tests run on the CPU.

Meta's layers are fairscale's: the process group and fairscale's model-parallel groups must exist
(Llama.build, or `init_distributed` and `init_model_parallel(1)`) before one is built.
"""


def metas_transformer(state, args, max_seq_len, max_batch_size):
    """Meta's llama-models Llama 3 Transformer with these weights (fairscale model parallel of 1)."""
    from llama_models.llama3.args import ModelArgs as MetaArgs
    from llama_models.llama3.model import Transformer as MetaTransformer

    meta_args = MetaArgs(
        dim=args.dim,
        n_layers=args.n_layers,
        n_heads=args.n_heads,
        n_kv_heads=args.n_kv_heads,
        vocab_size=args.vocab_size,
        multiple_of=args.multiple_of,
        ffn_dim_multiplier=args.ffn_dim_multiplier,
        norm_eps=args.norm_eps,
        rope_theta=args.rope_theta,
        use_scaled_rope=args.use_scaled_rope,
        max_batch_size=max_batch_size,
        max_seq_len=max_seq_len,
    )
    model = MetaTransformer(meta_args)
    model.load_state_dict({k: v for k, v in state.items() if k != "rope.freqs"}, strict=True)
    return model.eval()
