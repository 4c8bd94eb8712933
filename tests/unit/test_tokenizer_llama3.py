"""The Llama 3 tokenizer: Meta's real tiktoken table, its ids, specials, long inputs and bad files."""

import os
import shutil
import tempfile

import pytest

from llama import tokenizer as tokenizer_module
from llama.errors import CheckpointError
from llama.tokenizer import SentencePieceTokenizer, TiktokenTokenizer, Tokenizer, split_for_encoding
from support.llama3_tokenizer import llama3_lines, llama3_tokenizer_path, write_bpe

SENTENCE_IDS = [128000, 2028, 374, 264, 1296, 11914, 13, 128001]  # meta-llama/llama3, llama/test_tokenizer.py


@pytest.fixture(scope="module")
def tok():
    return Tokenizer(llama3_tokenizer_path())


@pytest.fixture(scope="module")
def meta_tok():
    """llama-models' own Llama 3 tokenizer, as the oracle for inputs long enough to be cut."""
    from llama_models.llama3.tokenizer import Tokenizer as MetaTokenizer

    return MetaTokenizer(llama3_tokenizer_path())


# --- which tokenizer a file is -------------------------------------------------------------------


def test_the_kind_is_read_from_the_file(tok, tokenizer_path):
    sp = Tokenizer(model_path=str(tokenizer_path))
    assert (type(tok), tok.kind, type(sp), sp.kind) == (
        TiktokenTokenizer,
        "tiktoken",
        SentencePieceTokenizer,
        "sentencepiece",
    )
    assert isinstance(tok, Tokenizer) and isinstance(sp, Tokenizer)
    assert (sp.n_words, sp.bos_id, sp.eos_id, sp.pad_id, sp.stop_tokens) == (512, 1, 2, -1, [2])
    assert sp.encode("Hello world", True, False) == sp.encode("Hello world", bos=True, eos=False)
    assert Tokenizer(model_path=llama3_tokenizer_path()).n_words == 128256


def test_a_file_of_no_known_kind_names_the_three(tmp_path):
    path = tmp_path / "tokenizer.model"
    path.write_bytes(b"<html>Not Found</html>\n")  # a failed download, say
    with pytest.raises(CheckpointError) as err:
        Tokenizer(path)
    assert str(err.value) == (
        f"{str(path)!r} is not a SentencePiece model (INTERNAL: could not parse ModelProto from {path}), a "
        "tiktoken BPE table (its first line b'<html>Not Found</html>' is not '<base64> <rank>') nor a Hugging "
        "Face tokenizer.json (it does not start with '{'); pass the tokenizer.model or tokenizer.json file "
        "that came with the weights"
    )


# --- the reference's ids ----------------------------------------------------------------------------


def test_ids_and_specials_match_meta(tok):
    assert (tok.n_words, tok.bos_id, tok.eos_id, tok.pad_id) == (128256, 128000, 128001, -1)
    assert tok.stop_tokens == [128001, 128008, 128009]
    assert tok.num_reserved_special_tokens == len(tok.special_tokens) == 256
    assert list(tok.special_tokens.values()) == list(range(128000, 128256))
    names = [
        "<|begin_of_text|>",
        "<|end_of_text|>",
        "<|reserved_special_token_0|>",
        "<|reserved_special_token_1|>",
        "<|finetune_right_pad_id|>",
        "<|step_id|>",
        "<|start_header_id|>",
        "<|end_header_id|>",
        "<|eom_id|>",
        "<|eot_id|>",
        "<|python_tag|>",
        "<|image|>",
        "<|reserved_special_token_2|>",
    ]
    assert list(tok.special_tokens)[:13] == names
    assert tok.special_tokens["<|reserved_special_token_245|>"] == 128255


def test_specials_equal_llama_models(tok, meta_tok):
    assert tok.special_tokens == meta_tok.special_tokens
    assert tok.pat_str == meta_tok.pat_str


def test_encode_and_decode_known_ids(tok):
    assert tok.encode("This is a test sentence.", bos=True, eos=True) == SENTENCE_IDS
    assert tok.encode("This is a test sentence.", bos=False, eos=False) == SENTENCE_IDS[1:-1]
    assert tok.decode(SENTENCE_IDS) == "<|begin_of_text|>This is a test sentence.<|end_of_text|>"
    assert [tok.encode(s, bos=False, eos=False) for s in ("user", "system", "assistant", "ipython", "\n\n")] == [
        [882],
        [9125],
        [78191],
        [23799, 4690],
        [271],
    ]
    assert tok.encode("", bos=True, eos=False) == [128000]
    assert tok.decode(2028) == "This"  # one int, as the Llama 2 generator decodes log-prob tokens


def test_text_that_looks_like_a_special_token_is_plain_text_by_default(tok):
    plain = [27, 91, 68, 354, 851, 91, 29]
    assert tok.encode("<|eot_id|>", bos=False, eos=False) == plain
    assert tok.decode(plain) == "<|eot_id|>"
    assert tok.encode("<|eot_id|>", bos=False, eos=False, allowed_special="all") == [128009]
    assert tok.encode("a<|eot_id|>", bos=False, eos=False, allowed_special={"<|eot_id|>"}) == [64, 128009]
    with pytest.raises(ValueError, match="disallowed special token '<|eot_id|>'"):
        tok.encode("<|eot_id|>", bos=False, eos=False, disallowed_special="all")


def test_encode_is_keyword_only_and_takes_only_str(tok):
    with pytest.raises(TypeError):
        tok.encode("hi", True, False)
    with pytest.raises(TypeError, match="a prompt must be a str, got bytes: b'hi'"):
        tok.encode(b"hi", bos=False, eos=False)


def test_a_character_split_across_tokens_decodes_to_ufffd_until_complete(tok):
    ids = tok.encode("café 🦙", bos=False, eos=False)
    assert ids == [936, 59958, 11410, 99, 247]
    assert [tok.decode(ids[:n]) for n in range(3, 6)] == ["café \ufffd", "café \ufffd", "café 🦙"]


# --- very long inputs ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, pieces",
    [
        ("abc" * 20000, [25000, 25000, 10000]),  # a run of non-whitespace cut every 25,000 characters
        (" \t" * 20000 + "x", [25000, 15001]),  # a run of whitespace likewise
        ("abc " * 150000, [400000, 200000]),  # short runs: only the 400,000-character chunks
        ("é" * 30000, [25000, 5000]),
        ("word " * 5000, [25000]),  # short enough: one piece, nothing to cut
    ],
)
def test_long_inputs_are_cut_and_encoded_like_the_reference(tok, meta_tok, text, pieces):
    assert [len(p) for p in split_for_encoding(text)] == pieces
    ids = tok.encode(text, bos=True, eos=False)
    assert ids == meta_tok.encode(text, bos=True, eos=False)
    assert ids[1:] == [i for p in split_for_encoding(text) for i in tok.model.encode(p)]
    if len(pieces) > 1 and text[0] != "é":  # the cuts change the ids: unsplit encoding differs
        assert ids[1:] != tok.model.encode(text)


# --- loading -------------------------------------------------------------------------------------


def test_loading_writes_nothing_to_any_tiktoken_cache(tmp_path, monkeypatch):
    caches = [tmp_path / d for d in ("tiktoken", "data-gym", "xdg", "tmp")]
    for d in caches:
        d.mkdir()
    for var, d in zip(("TIKTOKEN_CACHE_DIR", "DATA_GYM_CACHE_DIR", "XDG_CACHE_HOME", "TMPDIR"), caches):
        monkeypatch.setenv(var, str(d))
    monkeypatch.setattr(tempfile, "tempdir", str(caches[-1]))
    copy = shutil.copy(llama3_tokenizer_path(), tmp_path / "tokenizer.model")  # a path not loaded before
    tok = Tokenizer(copy)
    assert tok.decode(tok.encode("This is a test sentence.", bos=True, eos=True)).startswith("<|begin_of_text|>")
    assert [sorted(os.listdir(d)) for d in caches] == [[], [], [], []]


def test_a_table_is_parsed_once_per_file(tok):
    assert Tokenizer(llama3_tokenizer_path()).model is tok.model


def test_a_small_table_numbers_its_specials_after_its_ranks(tmp_path):
    small = Tokenizer(write_bpe(tmp_path / "small.model", llama3_lines(300)))
    assert (small.kind, small.n_words, small.bos_id, small.eos_id, small.stop_tokens) == (
        "tiktoken",
        556,
        300,
        301,
        [301, 308, 309],
    )
    assert small.decode(small.encode("hi there", bos=True, eos=False)) == "<|begin_of_text|>hi there"


def _corrupt(lines, lineno, new):
    lines = list(lines)
    lines[lineno - 1] = new
    return lines


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda ls: _corrupt(ls, 5, b"JQ=! 4\n"), "line 5: token b'JQ=!' is not valid base64"),
        (lambda ls: _corrupt(ls, 7, b"Jw== seven\n"), "line 7: rank b'seven' is not a non-negative integer"),
        (lambda ls: _corrupt(ls, 9, b"Kg== -8\n"), "line 9: rank b'-8' is not a non-negative integer"),
        (lambda ls: _corrupt(ls, 3, b"Iw==\n"), "line 3: expected 2 fields, got b'Iw=='"),
        (lambda ls: _corrupt(ls, 260, b"aW4= 300\n"), "line 260: rank 300 is out of range for a table of 300 lines"),
        (lambda ls: _corrupt(ls, 260, b"aW4= 12\n"), "line 260: rank 12 was already given on line 13"),
        (lambda ls: _corrupt(ls, 260, b"IQ== 259\n"), "line 260: token b'!' was already given on line 1"),
        (lambda ls: ls[:-1] + [ls[-1][:3]], "line 300: expected 2 fields, got b'cm8'"),  # cut mid-line
        (lambda ls: ls[:-1] + [ls[-1][:6]], "line 300: rank 2 was already given on line 3"),  # cut in the rank
    ],
)
def test_a_corrupt_table_names_the_file_and_line(tmp_path, edit, message):
    path = write_bpe(tmp_path / "tokenizer.model", edit(llama3_lines(300)))
    with pytest.raises(CheckpointError) as err:
        Tokenizer(path)
    assert str(err.value).startswith(f"{str(path)!r}, {message}")
    assert str(err.value).endswith("The file is corrupt or truncated: download tokenizer.model again")


def test_a_table_too_short_for_every_byte_is_refused(tmp_path):
    path = write_bpe(tmp_path / "tokenizer.model", llama3_lines(200))
    with pytest.raises(CheckpointError) as err:
        Tokenizer(path)
    assert str(err.value) == (
        f"{str(path)!r} ends after line 200 with 200 ranks and none for byte 0x0c (56 of the 256 single bytes "
        "have none); a byte-level BPE table ranks every byte. The file is truncated or is not a tokenizer: "
        "download tokenizer.model again"
    )


def test_the_encoding_cache_keeps_at_most_four_tables(tmp_path):
    for i in range(6):
        Tokenizer(write_bpe(tmp_path / f"t{i}.model", llama3_lines(256 + i)))
    assert len(tokenizer_module._ENCODINGS) == 4
