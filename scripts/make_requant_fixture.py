"""Record what llama.cpp's own quantizer writes for the default model.

Runs ``llama_model_quantize`` from llama-cpp-python (requantize allowed, no imatrix,
2 threads) on the default model once per file type in ``RUNS``, reads each output
with gguf-py and writes ``tests/fixtures/requant/llama_cpp_types.json``:

    {"llama_cpp_python": "0.3.36", "source": {"file": ..., "sha256": ...},
     "tensor_names": [...],                      # llama.cpp's output order (the same in every run)
     "file_types": {"Q4_K_M": {"type": "Q4_K_M", "ftype": 15, "pure": false,
                               "types": "F32 Q8_0 Q5_0 ...",   # one per tensor name
                               "size_bytes": ..., "sha256": ...,   # of the whole output file
                               "metadata_tail": [["general.quantization_version", 2], ...],
                               "tensor_sha256": ["first 16 hex digits", ...]},   # HASHED runs only
                    ...}}

``tests/test_requant.py`` checks labkit's type rules against every run's types (always)
and labkit's output bytes against the hashes (slow tests). Run it again after
upgrading llama-cpp-python:

    .venv/bin/python scripts/make_requant_fixture.py
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path

import gguf

from labkit.modelfiles import default_model_path
from labkit.quant.mixtures import FILE_TYPES, resolve_type

OUT_PATH = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "requant" / "llama_cpp_types.json"
# (the --type argument, pure): the four mixtures of issue 4, the other K mixtures, two pure types.
RUNS = [
    ("Q4_K_M", False),
    ("Q5_K_M", False),
    ("Q6_K", False),
    ("Q8_0", False),
    ("Q4_0", False),
    ("Q2_K", False),
    ("Q3_K_S", False),
    ("Q3_K_M", False),
    ("Q3_K_L", False),
    ("Q4_K_S", False),
    ("Q5_K_S", False),
    ("F16", False),
    ("Q4_K", True),
    ("Q5_0", True),
]
HASHED = {"Q4_K_M", "Q5_K_M", "Q6_K", "Q8_0"}  # per-tensor hashes kept for these (keeps the file small)
_QUIET_LOG = None


def short_hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def llama_cpp_quantize(src: Path, dst: Path, ftype_id: int, *, pure: bool) -> None:
    """Quantize ``src`` into ``dst`` with llama.cpp itself."""
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.nthread = 2
    params.ftype = ftype_id
    params.allow_requantize = True
    params.pure = pure
    status = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    if status != 0:
        raise RuntimeError(f"llama_model_quantize failed for ftype {ftype_id} (status {status})")


def describe(path: Path) -> dict:
    """Tensor names, types and byte hashes in file order, the last metadata keys, the file's hash."""
    reader = gguf.GGUFReader(path)
    return {
        "names": [t.name for t in reader.tensors],
        "types": " ".join(t.tensor_type.name for t in reader.tensors),
        "size_bytes": path.stat().st_size,
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "metadata_tail": [[key, reader.fields[key].contents()] for key in list(reader.fields)[-2:]],
        "tensor_sha256": [short_hash(bytes(t.data.tobytes())) for t in reader.tensors],
    }


def main() -> int:
    import llama_cpp

    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    global _QUIET_LOG  # ctypes must keep the callback alive while llama.cpp may call it
    _QUIET_LOG = llama_cpp.llama_log_callback(lambda level, text, user_data: None)
    llama_cpp.llama_log_set(_QUIET_LOG, None)
    src = default_model_path()
    record = {
        "llama_cpp_python": llama_cpp.__version__,
        "source": {"file": src.name, "sha256": hashlib.sha256(src.read_bytes()).hexdigest()},
        "file_types": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        for type_name, pure in RUNS:
            file_type, pure = resolve_type(type_name, pure=pure)
            dst = Path(tmp) / f"{type_name}.gguf"
            llama_cpp_quantize(src, dst, file_type.ftype_id, pure=pure)
            key = f"{type_name} --pure" if pure and type_name in FILE_TYPES else type_name
            run = {"type": type_name, "ftype": file_type.ftype_id, "pure": pure, **describe(dst)}
            names = run.pop("names")
            if record.setdefault("tensor_names", names) != names:
                raise RuntimeError(f"{key}: llama.cpp wrote the tensors in another order")
            if key not in HASHED:
                del run["tensor_sha256"]
            record["file_types"][key] = run
            dst.unlink()
            print(f"{key}: done", file=sys.stderr)
    OUT_PATH.parent.mkdir(parents=True, exist_ok=True)
    OUT_PATH.write_text(json.dumps(record, separators=(",", ":")) + "\n")
    print(f"wrote {OUT_PATH} ({OUT_PATH.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
