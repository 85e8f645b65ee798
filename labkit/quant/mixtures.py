"""llama.cpp's per-tensor type rules: which type each tensor of a mixture such as Q4_K_M gets.

A llama.cpp *file type* such as ``Q4_K_M`` is not one tensor type but a **mixture**.
llama.cpp's quantizer (``llama_tensor_get_type`` in ggml-org/llama.cpp
``src/llama-quant.cpp``) chooses a type for every tensor, and this module ports the
rules that apply to dense llama-architecture models:

1. Only tensors with two or more dimensions whose name ends in ``weight`` are
   quantized. Norms and other 1-D tensors are copied unchanged (F32).
2. The output matrix, or the token embedding when the model ties the two (as SmolLM2
   does, so it has no ``output.weight``), gets Q6_K. It gets Q8_0 instead when its rows
   do not split into whole blocks of the mixture's type, or when the type is Q8_0.
3. The ``_M`` mixtures give ``attn_v`` and ``ffn_down`` more bits in the first and last
   eighth of the layers and in every third layer between them (``use_more_bits``).
4. A K-quant needs rows that are a multiple of 256 weights. Other rows fall back:
   Q4_K→Q5_0, Q5_K→Q5_1, Q6_K→Q8_0, Q2_K/Q3_K→Q4_0, then F16 if even 32 does not divide.
5. A tensor already stored in its target type is copied byte for byte. Any other tensor
   is dequantized to f32 and quantized again, as llama.cpp does with ``allow_requantize``
   (each round adds error: requantizing is not the same as quantizing the original).

``pure=True`` is llama.cpp's ``--pure``: every quantizable tensor gets the mixture's
default type, and only the fallbacks of rule 4 still apply.

``labkit.quant.requant`` applies these plans to a file (what ``labkit quantize`` runs).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from labkit.errors import QuantizationError
from labkit.formats import FORMATS

GGML_QNT_VERSION = 2  # ggml.h: bump on quantization format changes


@dataclass(frozen=True)
class FileType:
    """One llama.cpp file type (``enum llama_ftype``): a name, its id and default tensor type."""

    name: str
    ftype_id: int
    default_qtype: str


# enum llama_ftype (include/llama.h) and llama_ftype_get_default_type, for the types labkit.quant implements.
FILE_TYPES: dict[str, FileType] = {
    ft.name: ft
    for ft in [
        FileType("F32", 0, "F32"),
        FileType("F16", 1, "F16"),
        FileType("BF16", 32, "BF16"),
        FileType("Q4_0", 2, "Q4_0"),
        FileType("Q4_1", 3, "Q4_1"),
        FileType("Q8_0", 7, "Q8_0"),
        FileType("Q5_0", 8, "Q5_0"),
        FileType("Q5_1", 9, "Q5_1"),
        FileType("Q2_K", 10, "Q2_K"),
        FileType("Q3_K_S", 11, "Q3_K"),
        FileType("Q3_K_M", 12, "Q3_K"),
        FileType("Q3_K_L", 13, "Q3_K"),
        FileType("Q4_K_S", 14, "Q4_K"),
        FileType("Q4_K_M", 15, "Q4_K"),
        FileType("Q5_K_S", 16, "Q5_K"),
        FileType("Q5_K_M", 17, "Q5_K"),
        FileType("Q6_K", 18, "Q6_K"),
    ]
}

# Tensor types that are not a llama.cpp file type of their own: "--type Q4_K" means
# "every quantizable tensor Q4_K", i.e. llama.cpp's ``--pure Q4_K_M``.
PURE_ALIASES: dict[str, str] = {"Q3_K": "Q3_K_M", "Q4_K": "Q4_K_M", "Q5_K": "Q5_K_M"}

# tensor_type_fallback: where a tensor goes when its row is not a whole number of blocks.
FALLBACK: dict[str, str] = {"Q2_K": "Q4_0", "Q3_K": "Q4_0", "Q4_K": "Q5_0", "Q5_K": "Q5_1", "Q6_K": "Q8_0"}

# Substrings that keep a ``*weight`` matrix unquantized (tensor_allows_quantization). llama.cpp's
# list also names tensors of other architectures (RWKV, T5, vision towers); none occur in a llama file.
_NEVER_QUANTIZED = ("_norm.weight", "ffn_gate_inp.weight")

# Tensor categories (tensor_get_category), checked in this order: first match wins.
_CATEGORIES = (
    ("attn_qkv.weight", "attn_v"),  # fused QKV and MLA's kv_b count as attn_v: they hold V
    ("attn_kv_b.weight", "attn_v"),
    ("attn_v.weight", "attn_v"),
    ("attn_k.weight", "attn_k"),
    ("attn_q.weight", "attn_q"),
    ("attn_output.weight", "attn_output"),
    ("ffn_up", "ffn_up"),
    ("ffn_gate", "ffn_gate"),
    ("ffn_down", "ffn_down"),
)
_LAYER = re.compile(r"^blk\.(\d+)\.")


@dataclass(frozen=True)
class ModelShape:
    """The hyperparameters llama.cpp's rules look at, read from GGUF metadata.

    Attributes:
        architecture: ``general.architecture`` (only ``"llama"`` is supported).
        n_layer: ``llama.block_count``.
        n_head: ``llama.attention.head_count``.
        n_head_kv: ``llama.attention.head_count_kv`` (defaults to ``n_head``).
        n_expert: ``llama.expert_count`` (0 for a dense model).
    """

    architecture: str
    n_layer: int
    n_head: int
    n_head_kv: int
    n_expert: int = 0

    @property
    def n_gqa(self) -> int:
        """Query heads per KV head (grouped-query attention)."""
        return self.n_head // self.n_head_kv if self.n_head_kv else 0

    @property
    def is_70b(self) -> bool:
        """llama.cpp's LLM_TYPE_70B: 80 layers with grouped-query attention."""
        return self.n_layer == 80 and self.n_head != self.n_head_kv

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, Any]) -> ModelShape:
        """Read the hyperparameters from a GGUF metadata mapping.

        Raises:
            QuantizationError: the model is not a dense llama-architecture model.
        """
        arch = str(metadata.get("general.architecture", ""))
        if arch != "llama":
            raise QuantizationError(
                f"labkit quantize follows llama.cpp's rules for llama-architecture models only; "
                f"this file's general.architecture is {arch!r}. Use llama.cpp's llama-quantize for it."
            )
        n_head = int(metadata.get("llama.attention.head_count", 0))
        shape = cls(
            architecture=arch,
            n_layer=int(metadata.get("llama.block_count", 0)),
            n_head=n_head,
            n_head_kv=int(metadata.get("llama.attention.head_count_kv", n_head)),
            n_expert=int(metadata.get("llama.expert_count", 0)),
        )
        if shape.n_expert > 1:
            raise QuantizationError(
                f"this model has {shape.n_expert} experts (mixture of experts); labkit quantize ports "
                "llama.cpp's rules for dense models only. Use llama.cpp's llama-quantize for it."
            )
        return shape


@dataclass(frozen=True)
class TensorPlan:
    """What happens to one tensor: its type before and after, and the rule that decided.

    Attributes:
        name: the GGUF tensor name.
        shape: torch order (the row length ``shape[-1]`` is ggml's ``ne[0]``).
        src_qtype: the type in the input file.
        dst_qtype: the type in the output file.
        reason: the llama.cpp rule that chose ``dst_qtype``, in words.
    """

    name: str
    shape: tuple[int, ...]
    src_qtype: str
    dst_qtype: str
    reason: str

    @property
    def copied(self) -> bool:
        """True when the bytes are copied unchanged (the type does not change)."""
        return self.src_qtype == self.dst_qtype


def resolve_type(type_name: str, *, pure: bool = False) -> tuple[FileType, bool]:
    """Turn a ``--type`` argument into a llama.cpp file type and the ``pure`` flag.

    Args:
        type_name: a file type (``"Q4_K_M"``, ``"Q8_0"``, ...) or a K-quant tensor type
            without a file type of its own (``"Q4_K"``: every tensor Q4_K, i.e. pure).
        pure: llama.cpp's ``--pure``: one type for every quantizable tensor.

    Returns:
        ``(file_type, pure)``.

    Raises:
        QuantizationError: an unknown name, listing the ones that work.
    """
    name = type_name.upper()
    if name in PURE_ALIASES:
        return FILE_TYPES[PURE_ALIASES[name]], True
    if name not in FILE_TYPES:
        known = ", ".join(list(FILE_TYPES) + list(PURE_ALIASES))
        raise QuantizationError(f"unknown quantization type {type_name!r}; choose one of: {known}")
    return FILE_TYPES[name], pure


def llama_cpp_order(names: Iterable[str]) -> list[str]:
    """Sort tensor names the way llama.cpp's model loader does (``weight_name_comparer``).

    Tensors without a ``blk.N.`` prefix come first, then each layer in number order;
    names tie-break alphabetically.
    """

    def key(name: str) -> tuple[int, str]:
        match = _LAYER.match(name)
        return (int(match.group(1)) if match else -1, name)

    return sorted(names, key=key)


def category(name: str) -> str:
    """The broad role of a tensor (llama.cpp's ``tensor_get_category``)."""
    if name == "output.weight":
        return "output"
    if name in ("token_embd.weight", "per_layer_token_embd.weight"):
        return "token_embd"
    for needle, cat in _CATEGORIES:
        if needle in name:
            return cat
    return "other"


def ggml_n_dims(shape: Sequence[int]) -> int:
    """Dimensions that count for ggml: trailing size-1 dims of ``ne`` (leading in torch order) don't."""
    ne = list(reversed(shape))  # ggml order: ne[0] is the row length
    for i in range(len(ne) - 1, 0, -1):
        if ne[i] > 1:
            return i + 1
    return 1


def allows_quantization(name: str, shape: Sequence[int]) -> bool:
    """True if llama.cpp would quantize this tensor at all (``tensor_allows_quantization``)."""
    if ggml_n_dims(shape) < 2 or not name.endswith("weight"):
        return False
    return not any(needle in name for needle in _NEVER_QUANTIZED)


def use_more_bits(i_layer: int, n_layers: int) -> bool:
    """llama.cpp's ``use_more_bits``: the first and last eighth of the layers, and every third between."""
    eighth = n_layers // 8
    return i_layer < eighth or i_layer >= 7 * n_layers // 8 or (i_layer - eighth) % 3 == 2


def fallback(qtype: str, row_length: int) -> tuple[str, str]:
    """Pick a type whose blocks fit a row of ``row_length`` weights (``tensor_type_fallback``).

    Returns:
        ``(qtype, reason)``; ``reason`` is empty when ``qtype`` already fits.
    """
    block = FORMATS[qtype].block_size
    if row_length % block == 0:
        return qtype, ""
    new_qtype = FALLBACK.get(qtype, qtype)
    if row_length % FORMATS[new_qtype].block_size != 0:
        new_qtype = "F16"
    return new_qtype, f"rows of {row_length} are not a multiple of {block}: {qtype} falls back to {new_qtype}"


def _output_type(file_type: FileType, row_length: int, *, tied: bool) -> tuple[str, str]:
    """The output matrix (or a tied token embedding): Q6_K, or Q8_0 if blocks don't fit."""
    what = "token_embd doubles as the output (tied)" if tied else "output"
    default = file_type.default_qtype
    block = FORMATS[default].block_size
    if row_length % block != 0:
        return "Q8_0", f"{what}: rows of {row_length} do not fit {default} blocks of {block}, so Q8_0"
    if default == "Q8_0":
        return "Q8_0", f"{what}: stays Q8_0"
    return "Q6_K", f"{what}: always Q6_K"


def _attn_v_type(file_type: FileType, model: ModelShape, i_attn_v: int, n_attn_v: int) -> tuple[str, str]:
    """attn_v holds the values every head reads: the mixtures give it extra bits."""
    name, qtype, reason = file_type.name, file_type.default_qtype, "attn_v: default type"
    if name == "Q2_K":
        qtype = "Q4_K" if model.n_gqa >= 4 else "Q3_K"
        reason = f"attn_v in Q2_K with {model.n_gqa} query heads per KV head"
    elif name == "Q3_K_M":
        qtype, reason = ("Q5_K" if i_attn_v < 2 else "Q4_K"), "attn_v in Q3_K_M (first two layers Q5_K)"
    elif name == "Q3_K_L":
        qtype, reason = "Q5_K", "attn_v in Q3_K_L"
    elif name in ("Q4_K_M", "Q5_K_M") and use_more_bits(i_attn_v, n_attn_v):
        qtype, reason = "Q6_K", f"attn_v #{i_attn_v} of {n_attn_v}: use_more_bits layer"
    elif name == "Q4_K_S" and i_attn_v < 4:
        qtype, reason = "Q5_K", "attn_v in the first four layers of Q4_K_S"
    if model.is_70b and qtype in ("Q3_K", "Q4_K"):
        qtype, reason = "Q5_K", "attn_v of a 70B model (8 query heads share it)"
    return qtype, reason


def _ffn_down_type(file_type: FileType, i_layer: int, n_layer: int) -> tuple[str, str]:
    """ffn_down is the most error-sensitive matrix of the feed-forward block."""
    name, qtype, reason = file_type.name, file_type.default_qtype, "ffn_down: default type"
    if name == "Q2_K":
        qtype, reason = "Q3_K", "ffn_down in Q2_K"
    elif name == "Q3_K_M":
        qtype = "Q5_K" if i_layer < n_layer // 16 else "Q4_K"
        reason = "ffn_down in Q3_K_M (first sixteenth Q5_K)"
    elif name == "Q3_K_L":
        qtype, reason = "Q5_K", "ffn_down in Q3_K_L"
    elif name in ("Q4_K_M", "Q5_K_M") and use_more_bits(i_layer, n_layer):
        qtype, reason = "Q6_K", f"ffn_down #{i_layer} of {n_layer}: use_more_bits layer"
    elif name == "Q4_K_S" and i_layer < n_layer // 8:
        qtype, reason = "Q5_K", "ffn_down in the first eighth of Q4_K_S"
    return qtype, reason


def _attn_output_type(file_type: FileType) -> tuple[str, str]:
    bumps = {"Q2_K": "Q3_K", "Q3_K_M": "Q4_K", "Q3_K_L": "Q5_K"}
    if file_type.name in bumps:
        return bumps[file_type.name], f"attn_output in {file_type.name}"
    return file_type.default_qtype, "attn_output: default type"


def mixture_type(
    name: str,
    shape: Sequence[int],
    file_type: FileType,
    model: ModelShape,
    counters: dict[str, int],
    *,
    tied: bool,
) -> tuple[str, str]:
    """The mixture's choice for one quantizable tensor, before fallbacks (``llama_tensor_get_type_impl``).

    Args:
        counters: running ``attn_v`` and ``ffn_down`` counts plus ``n_attn_v``; llama.cpp
            numbers those tensors in file order instead of parsing the layer from the name.

    Returns:
        ``(qtype, reason)``.
    """
    cat = category(name)
    if cat == "output" or (tied and cat == "token_embd"):
        return _output_type(file_type, shape[-1], tied=cat == "token_embd")
    if cat == "attn_v":
        counters["attn_v"] += 1
        return _attn_v_type(file_type, model, counters["attn_v"] - 1, counters["n_attn_v"])
    if cat == "ffn_down":
        counters["ffn_down"] += 1
        return _ffn_down_type(file_type, counters["ffn_down"] - 1, model.n_layer)
    if cat == "attn_output":
        return _attn_output_type(file_type)
    return file_type.default_qtype, f"{cat}: default type"


def _target_type(
    info: Any, file_type: FileType, model: ModelShape, counters: dict[str, int], *, pure: bool, tied: bool
) -> tuple[str, str]:
    """The output type of one tensor (``llama_tensor_get_type``), with the reason."""
    name, shape = info.name, tuple(info.shape)
    if not allows_quantization(name, shape):
        return info.qtype, "kept: 1-D, a norm, or not a weight matrix"
    default = file_type.default_qtype
    if not FORMATS[default].quantized:
        return default, f"{file_type.name}: every weight matrix is {default}"
    if pure:
        qtype, reason = default, f"pure {default}"
    else:
        qtype, reason = mixture_type(name, shape, file_type, model, counters, tied=tied)
    new_qtype, why = fallback(qtype, shape[-1])
    return new_qtype, f"{reason}; {why}" if why else reason


def plan_types(
    tensors: Mapping[str, Any] | Iterable[Any],
    metadata: Mapping[str, Any],
    type_name: str,
    *,
    pure: bool = False,
) -> list[TensorPlan]:
    """Decide every tensor's output type the way llama.cpp's quantizer does.

    Args:
        tensors: ``GGUFFile.tensors`` (name → TensorInfo) or any records with ``name``,
            ``shape`` (torch order) and ``qtype``.
        metadata: the input file's metadata (architecture and layer counts are read from it).
        type_name: a llama.cpp file type (``"Q4_K_M"``) or a tensor type (see :func:`resolve_type`).
        pure: one type for every quantizable tensor (llama.cpp's ``--pure``).

    Returns:
        One :class:`TensorPlan` per tensor, in llama.cpp's output order.

    Example:
        >>> with labkit.gguf.open(path) as f:
        ...     plans = plan_types(f.tensors, f.metadata, "Q4_K_M")
    """
    file_type, pure = resolve_type(type_name, pure=pure)
    model = ModelShape.from_metadata(metadata)
    listed: Iterable[Any] = tensors.values() if isinstance(tensors, Mapping) else tensors
    infos = {t.name: t for t in listed}
    names = llama_cpp_order(infos)
    counters = {"attn_v": 0, "ffn_down": 0, "n_attn_v": sum(category(n) == "attn_v" for n in names)}
    tied = "output.weight" not in infos
    plans = []
    for name in names:
        info = infos[name]
        qtype, reason = _target_type(info, file_type, model, counters, pure=pure, tied=tied)
        plans.append(TensorPlan(name, tuple(int(d) for d in info.shape), info.qtype, qtype, reason))
    return plans
