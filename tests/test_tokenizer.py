"""labkit.runtime.tokenizer: a byte-level BPE rebuilt from GGUF metadata (ids vs llama.cpp: test_model_llama_cpp.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from labkit import gguf
from labkit.errors import ModelError
from labkit.runtime.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def metadata(default_model: Path) -> dict:
    with gguf.open(default_model) as f:
        return {key: f.metadata[key] for key in f.metadata if key.startswith("tokenizer.")}


@pytest.fixture(scope="module")
def tok(metadata: dict) -> Tokenizer:
    return Tokenizer.from_metadata(metadata)


def test_known_ids(tok: Tokenizer) -> None:
    assert tok.encode("Hello world") == [19556, 905]
    assert tok.encode("12345") == [33, 34, 35, 36, 37]  # smollm splits every digit
    assert tok.vocab_size == 49152


def test_special_tokens_are_parsed_only_when_asked(tok: Tokenizer) -> None:
    text = "<|im_start|>user\nhi<|im_end|>"
    assert tok.encode(text) == [1, 4093, 198, 6004, 2]
    plain = tok.encode(text, parse_special=False)
    assert 1 not in plain and 2 not in plain and len(plain) > 5
    assert tok.decode([1, 4093, 198, 6004, 2]) == "user\nhi"
    assert tok.decode([1, 4093, 198, 6004, 2], skip_special=False) == text


def test_special_ids_come_from_metadata(tok: Tokenizer) -> None:
    assert (tok.special.bos_id, tok.special.eos_id, tok.special.add_bos) == (1, 2, False)
    assert {0, 2} <= tok.special.end_of_generation_ids  # <|endoftext|>, <|im_end|>
    assert tok.encode("hi", add_special=True) == tok.encode("hi")  # add_bos_token is false for SmolLM2


def test_bos_is_added_when_the_file_asks(metadata: dict) -> None:
    with_bos = Tokenizer.from_metadata({**metadata, "tokenizer.ggml.add_bos_token": True})
    assert with_bos.encode("hi", add_special=True) == [1, *with_bos.encode("hi")]


# SmolLM2's vocabulary lacks 21 of the 256 byte tokens: six control characters, the never-valid
# UTF-8 bytes, and the lead bytes 0xF1/0xF2 of code points U+40000 and up.
MISSING_BYTE_CHARS = "\x04\x06\x13\x14\x16\x1d"


@settings(max_examples=200, deadline=None)
@given(
    st.text(
        st.characters(
            max_codepoint=0x3FFFF, blacklist_categories=("Cs",), blacklist_characters=MISSING_BYTE_CHARS
        ),
        max_size=64,
    )
)
def test_decode_inverts_encode_on_any_text_the_vocabulary_covers(tok: Tokenizer, text: str) -> None:
    assert tok.decode(tok.encode(text, parse_special=False)) == text


def test_bytes_missing_from_the_vocabulary_are_dropped_as_llama_cpp_does(tok: Tokenizer) -> None:
    # U+40000 is f1 80 80 80; there is no token for 0xf1 (llama.cpp gives the same ids)
    assert tok.encode("a\U00040000b") == [81, 218, 218, 218, 82]


def test_chat_template_renders_in_a_sandbox(tok: Tokenizer) -> None:
    prompt = tok.apply_chat_template([{"role": "user", "content": "Hi"}])
    assert prompt.startswith("<|im_start|>system\n") and prompt.endswith(
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )
    no_prompt = tok.apply_chat_template([{"role": "user", "content": "Hi"}], add_generation_prompt=False)
    assert no_prompt == prompt.removesuffix("<|im_start|>assistant\n")


def test_hostile_chat_template_is_stopped(metadata: dict) -> None:
    # CVE-2024-34359: a GGUF template that reaches Python internals to run code.
    hostile = "{{ ''.__class__.__mro__[1].__subclasses__() }}"
    tok = Tokenizer.from_metadata({**metadata, "tokenizer.chat_template": hostile})
    with pytest.raises(ModelError, match="chat template failed"):
        tok.apply_chat_template([{"role": "user", "content": "Hi"}])


def test_template_can_raise_its_own_error(metadata: dict) -> None:
    template = "{{ raise_exception('roles must alternate') }}"
    tok = Tokenizer.from_metadata({**metadata, "tokenizer.chat_template": template})
    with pytest.raises(ModelError, match="roles must alternate"):
        tok.apply_chat_template([])


def test_missing_template_is_a_clear_error(metadata: dict) -> None:
    tok = Tokenizer.from_metadata({k: v for k, v in metadata.items() if k != "tokenizer.chat_template"})
    with pytest.raises(ModelError, match="no tokenizer.chat_template"):
        tok.apply_chat_template([{"role": "user", "content": "Hi"}])


def test_unsupported_vocabularies_are_named(metadata: dict) -> None:
    with pytest.raises(ModelError, match="'llama'.*supports only 'gpt2'"):
        Tokenizer.from_metadata({**metadata, "tokenizer.ggml.model": "llama"})
    with pytest.raises(ModelError, match="'qwen2'.*supports"):
        Tokenizer.from_metadata({**metadata, "tokenizer.ggml.pre": "qwen2"})
    with pytest.raises(ModelError, match="'llama-bpe'.*supports"):
        Tokenizer.from_metadata({**metadata, "tokenizer.ggml.pre": "llama-bpe"})


@pytest.mark.parametrize("bad_id", [49152, 99999, -1])
def test_decode_names_an_id_outside_the_vocabulary(tok: Tokenizer, bad_id: int) -> None:
    with pytest.raises(
        ModelError,
        match=rf"token id {bad_id} is outside the vocabulary: ids run from 0 to "
        r"49151 \(vocab size 49152\)",
    ):
        tok.decode([19556, bad_id])
    assert tok.decode([19556, 49151]).startswith("Hello")  # the last id is still fine
