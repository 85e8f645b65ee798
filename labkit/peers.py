"""The peer labkit is checked against: llama.cpp, through llama-cpp-python (optional).

Tests, fixture scripts and benchmarks all open llama.cpp the same way, so the work-around it
needs lives here once: on virtual machines that advertise AMX instructions they cannot run,
llama.cpp's AMX "extra buffer" matmul path crashes, so models are loaded with
``use_extra_bufts = False``. Set ``OMP_WAIT_POLICY=PASSIVE`` in the environment for sane
timings when llama.cpp shares 2 cores with torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def open_llama(
    model_path: str | Path,
    *,
    n_threads: int = 2,
    n_ctx: int = 512,
    use_mmap: bool = True,
    extra_bufts: bool = False,
) -> Any:
    """Load a GGUF in llama.cpp on the CPU, keeping the logits of every position.

    Args:
        model_path: the GGUF file.
        n_threads: threads for decoding and for prompt batches.
        n_ctx: context length to allocate.
        use_mmap: map the file (llama.cpp's default) or read it into buffers at load time.
        extra_bufts: let llama.cpp repack weights into its "extra" CPU buffers (its default; off here
            because the AMX variant crashes on some VMs, and the repacked kernels add in another order).

    Returns:
        A ``llama_cpp.Llama``.

    Raises:
        ImportError: llama-cpp-python is not installed (``LABKIT_LLAMA_CPP=1 ./run.sh test`` adds it).
    """
    import llama_cpp
    import llama_cpp.llama_cpp as bindings  # the module llama_cpp.Llama reads its defaults from

    original = bindings.llama_model_default_params

    def default_params() -> Any:
        params = original()
        params.use_extra_bufts = extra_bufts
        return params

    # Llama reads its defaults from llama_cpp.llama_cpp; patching the package's re-export (as this
    # function once did) changed nothing.
    bindings.llama_model_default_params = default_params
    try:
        return llama_cpp.Llama(
            str(model_path),
            n_ctx=n_ctx,
            n_threads=n_threads,
            n_threads_batch=n_threads,
            logits_all=True,
            flash_attn=False,
            use_mmap=use_mmap,
            verbose=False,
        )
    finally:
        bindings.llama_model_default_params = original
