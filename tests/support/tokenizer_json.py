"""Hugging Face tokenizer.json files written by transformers from our test tokenizers.

Llama 2: the vocabulary of a SentencePiece BPE model given to transformers' `LlamaTokenizer`, which
builds the merges from it as its own SentencePiece import does (that import reads the model's
protobuf and needs the `protobuf` package; the vocabulary read through sentencepiece needs nothing).
Llama 3: Meta's tiktoken file through transformers' `TikTokenConverter`, with the 256 special
tokens, as transformers' Llama 3 conversion script does. Importing this skips the importing test
module where transformers is not installed.
"""

from pathlib import Path

import pytest

transformers = pytest.importorskip("transformers")


def llama2_json(sentencepiece_model: Path, out_dir: Path) -> Path:
    """out_dir/tokenizer.json (and tokenizer_config.json) for a SentencePiece BPE tokenizer.model."""
    from sentencepiece import SentencePieceProcessor
    from transformers.convert_slow_tokenizer import generate_merges

    sp = SentencePieceProcessor()
    sp.Load(str(sentencepiece_model))
    vocab = {sp.id_to_piece(i): i for i in range(sp.get_piece_size())}
    transformers.LlamaTokenizer(vocab=vocab, merges=generate_merges(vocab)).save_pretrained(str(out_dir))
    return out_dir / "tokenizer.json"


def llama3_json(tiktoken_model: Path, out_dir: Path) -> Path:
    """out_dir/tokenizer.json (and tokenizer_config.json) for Meta's Llama 3 tokenizer.model."""
    from transformers.convert_slow_tokenizer import TikTokenConverter

    from llama.tokenizer import PAT_STR, SPECIAL_TOKEN_NAMES

    converted = TikTokenConverter(
        vocab_file=str(tiktoken_model), pattern=PAT_STR, extra_special_tokens=SPECIAL_TOKEN_NAMES
    ).converted()
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=converted, bos_token="<|begin_of_text|>", eos_token="<|end_of_text|>"
    )
    fast.save_pretrained(str(out_dir))
    return out_dir / "tokenizer.json"


def hf_tokenizer(json_path: Path):
    """transformers' tokenizer for a tokenizer.json: the file alone, as llama.tokenizer reads it
    (AutoTokenizer also reads tokenizer_config.json, and takes seconds longer on the Llama 3 file)."""
    return transformers.PreTrainedTokenizerFast(tokenizer_file=str(json_path))
