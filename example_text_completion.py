"""Text completion with a Llama 2 checkpoint: `torchrun --nproc_per_node MP example_text_completion.py ...`
(or plain `python example_text_completion.py ...` on one process: CPU, CUDA or Apple MPS).
Without --ckpt_dir/--tokenizer_path it runs the bundled demo model; --stream prints text as it comes."""
import time
from typing import List, Optional

from llama import Llama
from llama.cli import build_generator, log_summary, run
from llama.streaming import in_prompt_order, stream_text_completion


def main(
    ckpt_dir: Optional[str] = None,
    tokenizer_path: Optional[str] = None,
    temperature: float = 0.6,
    top_p: float = 0.9,
    max_seq_len: int = 128,
    max_gen_len: int = 64,
    max_batch_size: int = 4,
    device: Optional[str] = None,
    dtype: Optional[str] = None,
    *,  # flags only (--stream, ...), so that positional arguments keep the reference's meaning
    stream: bool = False,
    compile: bool = False,
    quantize: Optional[str] = None,
):
    generator, load_s = build_generator(
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
    started = time.perf_counter()
    if stream:
        n_tokens = print_streamed(generator, prompts, temperature, top_p, max_gen_len)
    else:
        results = generator.text_completion(
            prompts,
            max_gen_len=max_gen_len,
            temperature=temperature,
            top_p=top_p,
        )
        n_tokens = sum(len(generator.tokenizer.encode(r["generation"], bos=False, eos=False)) for r in results)
        if generator.is_main:
            for prompt, result in zip(prompts, results):
                print(prompt)
                print(f"> {result['generation']}")
                print("\n==================================\n")
    log_summary(load_s, n_tokens, time.perf_counter() - started)


def print_streamed(generator: Llama, prompts: List[str], temperature: float, top_p: float, max_gen_len: int) -> int:
    """Print each completion as it is generated, one prompt after another; -> tokens generated."""
    n_tokens, started = 0, set()
    events = stream_text_completion(generator, prompts, temperature=temperature, top_p=top_p, max_gen_len=max_gen_len)
    for event in in_prompt_order(events):
        n_tokens += event.token is not None
        if not generator.is_main:
            continue
        if event.index not in started:
            started.add(event.index)
            print(prompts[event.index])
            print("> ", end="")
        print(event.text, end="", flush=True)
        if event.done:
            print()
            print("\n==================================\n")
    return n_tokens


if __name__ == "__main__":
    run(main)
