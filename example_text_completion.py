"""Text completion with a Llama checkpoint (Llama 2, 3, 3.1, 3.2; Meta or Hugging Face layout):
`torchrun --nproc_per_node MP example_text_completion.py ...`
(or plain `python example_text_completion.py ...` on one process: CPU, CUDA or Apple MPS).
Without --ckpt_dir/--tokenizer_path it runs the bundled demo model; --stream prints text as it comes."""

from typing import List, Optional, Sequence, Union

from llama.cli.frontend import FLAGS, build_generator, complete, sampling_options
from llama.cli.run import run


def main(
    ckpt_dir: Optional[str] = None,
    tokenizer_path: Optional[str] = None,
    temperature: float = 0.6,
    top_p: float = 0.9,
    max_seq_len: int = 128,
    max_gen_len: int = 64,
    max_batch_size: int = 4,
    # This project's additions (described in llama.frontend.FLAGS); after the `*`, flags only, so
    # that positional arguments keep the reference's meaning.
    device: Optional[str] = None,
    dtype: Optional[str] = None,
    *,
    stream: bool = False,
    compile: bool = False,
    quantize: Optional[str] = None,
    kv_cache_dtype: Optional[str] = None,
    top_k: int = 0,
    repetition_penalty: float = 1.0,
    stop: Union[None, str, Sequence[str]] = None,
):
    options = sampling_options(top_k, repetition_penalty, stop)  # checked before the load; {} when all are off
    generator = build_generator(
        ckpt_dir,
        tokenizer_path,
        temperature,
        top_p,
        max_gen_len,
        max_seq_len=max_seq_len,
        max_batch_size=max_batch_size,
        device=device,
        dtype=dtype,
        compile=compile,
        quantize=quantize,
        kv_cache_dtype=kv_cache_dtype,
    )

    prompts: List[str] = [
        # For these prompts, the expected answer is the natural continuation of the prompt
        "I believe the meaning of life is",
        "Simply put, the theory of relativity states that ",
        """A brief message congratulating the team on the launch:

        Hi everyone,
        
        I just """,
        # Few shot prompt (providing a few examples before asking model to complete more);
        """Translate English to French:
        
        sea otter => loutre de mer
        peppermint => menthe poivrée
        plush girafe => girafe peluche
        cheese =>""",
    ]
    complete(generator, prompts, temperature, top_p, max_gen_len, chat=False, stream=stream, compiled=compile,
             options=options)  # fmt: skip


if __name__ == "__main__":
    run(main, FLAGS)
