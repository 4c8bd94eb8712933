"""The SentencePiece wrapper keeps the reference's ids and interface."""

from llama import Tokenizer


def test_special_ids_match_llama_2(tokenizer_path):
    tok = Tokenizer(str(tokenizer_path))
    assert (tok.sp_model.unk_id(), tok.bos_id, tok.eos_id, tok.pad_id) == (0, 1, 2, -1)
    assert tok.n_words == tok.sp_model.vocab_size() == 512


def test_encode_adds_bos_and_eos_only_when_asked(tokenizer_path):
    tok = Tokenizer(str(tokenizer_path))
    body = tok.sp_model.encode("Hello world")
    assert tok.encode("Hello world", bos=False, eos=False) == body
    assert tok.encode("Hello world", bos=True, eos=True) == [1] + body + [2]
    assert tok.decode(tok.encode("Hello world", bos=True, eos=False)) == "Hello world"


def test_byte_fallback_round_trips_text_outside_the_vocabulary(tokenizer_path):
    tok = Tokenizer(str(tokenizer_path))
    text = "naïve café 🦙"
    assert tok.decode(tok.encode(text, bos=True, eos=False)) == text
