"""Text <-> token ids, rebuilt from a GGUF file's metadata alone.

A GGUF model carries its whole tokenizer in ``tokenizer.ggml.*`` keys: the
vocabulary (``tokens``), the BPE merge rules (``merges``), a type per token
(``token_type``: 1 normal, 3 control such as ``<|im_start|>``, 4 user-defined),
the name of the pre-tokenizer (``pre``: which regexes cut text into words
before BPE runs), the special ids (``bos_token_id``, ...) and a jinja2 chat
template. This module turns those keys into a Hugging Face ``tokenizers``
pipeline that gives the same ids as llama.cpp::

    text --split special tokens--> pieces --pre-tokenizer regexes--> words
         --bytes as printable chars (GPT-2 byte-level)--> BPE merges --> ids

References: llama.cpp ``src/llama-vocab.cpp`` (the regex table per ``pre``
type, special-token partitioning) and ``src/unicode.cpp``; GPT-2's byte-level
BPE. The chat template is untrusted text from the file, so it is rendered in
jinja2's *sandboxed* environment (CVE-2024-34359 was a template that ran code).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from labkit.errors import ModelError

# The word-splitting regexes, per ``tokenizer.ggml.pre`` value, as llama.cpp applies them:
# each regex splits every piece the previous one produced, and keeps the text between matches too.
GPT2_REGEX = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
PRE_TOKENIZER_REGEXES: dict[str, list[str]] = {
    "default": [r"[\p{P}\$\+<=>\^~\|]+", GPT2_REGEX, r"\p{N}+", r"[0-9][0-9][0-9]"],
    "gpt2": [GPT2_REGEX],
    "smollm": [r"\p{N}", GPT2_REGEX],  # every digit on its own, then GPT-2 words
    "starcoder": [r"\p{N}", GPT2_REGEX],
}

# tokenizer.ggml.token_type values (llama.cpp ``llama_token_type``)
TOKEN_NORMAL, TOKEN_UNKNOWN, TOKEN_CONTROL, TOKEN_USER_DEFINED, TOKEN_UNUSED, TOKEN_BYTE = 1, 2, 3, 4, 5, 6


@dataclass(frozen=True)
class SpecialTokens:
    """The ids a runtime needs to know by name (``None`` where the file names none)."""

    bos_id: int | None
    eos_id: int | None
    end_of_generation_ids: frozenset[int]  # eos plus chat end markers such as <|im_end|>
    add_bos: bool


class Tokenizer:
    """A byte-level BPE tokenizer built from ``tokenizer.ggml.*`` metadata.

    Example:
        >>> tok = Tokenizer.from_metadata(gguf_file.metadata)
        >>> tok.decode(tok.encode("Hello world"))
        'Hello world'
    """

    def __init__(
        self, backend: Any, tokens: Sequence[str], special: SpecialTokens, chat_template: str | None
    ):
        self._backend = backend  # tokenizers.Tokenizer
        self.tokens = list(tokens)
        self.special = special
        self.chat_template = chat_template

    @property
    def vocab_size(self) -> int:
        return len(self.tokens)

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, Any]) -> Tokenizer:
        """Build the tokenizer from a GGUF metadata mapping.

        Raises:
            ModelError: the file's tokenizer model or pre-tokenizer is not one labkit supports.
        """
        model = metadata.get("tokenizer.ggml.model")
        if model != "gpt2":
            raise ModelError(
                f"tokenizer.ggml.model is {model!r}; labkit supports only 'gpt2' (byte-level BPE, as in "
                "SmolLM2). SentencePiece ('llama') vocabularies are not supported."
            )
        pre = str(metadata.get("tokenizer.ggml.pre", "default"))
        if pre not in PRE_TOKENIZER_REGEXES:
            raise ModelError(
                f"tokenizer.ggml.pre is {pre!r}; labkit supports {sorted(PRE_TOKENIZER_REGEXES)}"
            )
        tokens = [str(t) for t in metadata["tokenizer.ggml.tokens"]]
        types = [int(t) for t in metadata.get("tokenizer.ggml.token_type", [TOKEN_NORMAL] * len(tokens))]
        merges = [str(m) for m in metadata.get("tokenizer.ggml.merges", [])]
        backend = _build_backend(tokens, types, merges, PRE_TOKENIZER_REGEXES[pre])
        special = _special_tokens(metadata, tokens, types)
        template = metadata.get("tokenizer.chat_template")
        return cls(backend, tokens, special, str(template) if template is not None else None)

    def encode(self, text: str, *, add_special: bool = False, parse_special: bool = True) -> list[int]:
        """Text -> token ids.

        Args:
            text: any Unicode string.
            add_special: prepend BOS when the file asks for it (``tokenizer.ggml.add_bos_token``).
            parse_special: read control tokens written in the text (``<|im_start|>``) as one id,
                as llama.cpp does with ``parse_special=true``; ``False`` tokenizes them as plain text.
        Returns:
            The ids, equal to llama.cpp's ``llama_tokenize`` with the same flags.
        """
        self._backend.encode_special_tokens = not parse_special
        ids = self._backend.encode(text, add_special_tokens=False).ids
        if add_special and self.special.add_bos and self.special.bos_id is not None:
            ids = [self.special.bos_id, *ids]
        return ids

    def decode(self, ids: Sequence[int], *, skip_special: bool = True) -> str:
        """Token ids -> text (control tokens dropped unless ``skip_special=False``).

        Raises:
            ModelError: an id outside the vocabulary (``0 .. vocab_size - 1``).
        """
        ids = [int(i) for i in ids]
        bad = next((i for i in ids if not 0 <= i < self.vocab_size), None)
        if bad is not None:
            raise ModelError(
                f"token id {bad} is outside the vocabulary: ids run from 0 to "
                f"{self.vocab_size - 1} (vocab size {self.vocab_size})"
            )
        return self._backend.decode(ids, skip_special_tokens=skip_special)

    def apply_chat_template(
        self, messages: Sequence[Mapping[str, str]], *, add_generation_prompt: bool = True
    ) -> str:
        """Format a chat with the file's own jinja2 template, rendered in a sandbox.

        Args:
            messages: ``[{"role": "user", "content": "Hi"}, ...]``.
            add_generation_prompt: end with the header that asks the assistant to answer.
        Returns:
            The prompt text (encode it with ``parse_special=True``).
        Raises:
            ModelError: the file has no chat template, or the template fails or tries something unsafe.
        """
        if not self.chat_template:
            raise ModelError("this model file has no tokenizer.chat_template; pass a plain prompt instead")
        import jinja2
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        def raise_exception(message: str) -> None:
            raise jinja2.TemplateError(message)

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.globals["raise_exception"] = raise_exception
        bos = self.tokens[self.special.bos_id] if self.special.bos_id is not None else ""
        eos = self.tokens[self.special.eos_id] if self.special.eos_id is not None else ""
        try:
            template = env.from_string(self.chat_template)
            return template.render(
                messages=list(messages),
                add_generation_prompt=add_generation_prompt,
                bos_token=bos,
                eos_token=eos,
            )
        except jinja2.TemplateError as error:  # SecurityError is a TemplateError too
            raise ModelError(f"the file's chat template failed: {error}") from error


def _build_backend(tokens: list[str], types: list[int], merges: list[str], regexes: list[str]) -> Any:
    """Assemble the HF ``tokenizers`` pipeline: BPE model, regex splits, byte-level mapping."""
    from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers
    from tokenizers import Tokenizer as HFTokenizer

    vocab = {token: i for i, token in enumerate(tokens)}
    pairs = [(left, right) for left, right in (m.split(" ", 1) for m in merges)]
    backend = HFTokenizer(models.BPE(vocab=vocab, merges=pairs, ignore_merges=False))
    splits = [pre_tokenizers.Split(Regex(r), behavior="isolated") for r in regexes]
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [*splits, pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
    )
    backend.decoder = decoders.ByteLevel()
    # Control tokens match only when parse_special is on; user-defined tokens always match.
    backend.add_special_tokens(
        [
            AddedToken(tokens[i], special=True, normalized=False)
            for i, t in enumerate(types)
            if t == TOKEN_CONTROL
        ]
    )
    backend.add_tokens(
        [
            AddedToken(tokens[i], special=False, normalized=False)
            for i, t in enumerate(types)
            if t == TOKEN_USER_DEFINED
        ]
    )
    return backend


def _special_tokens(metadata: Mapping[str, Any], tokens: list[str], types: list[int]) -> SpecialTokens:
    def token_id(key: str) -> int | None:
        value = metadata.get(f"tokenizer.ggml.{key}")
        return int(value) if value is not None and 0 <= int(value) < len(tokens) else None

    eos = token_id("eos_token_id")
    eot = token_id("eot_token_id")
    # Chat models end a turn with a control token named like these (llama.cpp does the same search).
    end_names = {"<|im_end|>", "<|eot_id|>", "<|end_of_text|>", "<|endoftext|>", "<end_of_turn>", "<|end|>"}
    ends = {
        i
        for i, (tok, typ) in enumerate(zip(tokens, types, strict=True))
        if typ == TOKEN_CONTROL and tok in end_names
    }
    ends |= {i for i in (eos, eot) if i is not None}
    return SpecialTokens(
        bos_id=token_id("bos_token_id"),
        eos_id=eos,
        end_of_generation_ids=frozenset(ends),
        add_bos=bool(metadata.get("tokenizer.ggml.add_bos_token", False)),
    )
