"""How well a model predicts a text, per character, so models with different vocabularies compare."""

from typing import Sequence

from ..generation import Llama


def nats_per_char(generator: Llama, texts: Sequence[str]) -> float:
    """Sum over texts of log p(token | bos and earlier tokens), divided by the number of characters.

    Each text is scored on its own from bos, and must fit in max_seq_len tokens. Negative; higher
    is better. A model that knows nothing of the text scores about -ln(vocab size) / (chars per token).
    """
    if not texts:
        raise ValueError("texts is empty; give at least one non-empty text to score")
    scored = generator.text_completion(list(texts), temperature=0.0, max_gen_len=0, logprobs=True, echo=True)
    return sum(sum(r["logprobs"]) for r in scored) / sum(len(t) for t in texts)
