"""labkit: measure how model weights travel disk -> RAM -> VRAM.

The package reads as the lab's table of contents, one subpackage per chapter:

- ``hierarchy``  this machine's I/O tiers, measured: probe, speed-table rows, page cache (chapter 1)
- ``quant``      GGML block quantization, byte-identical to llama.cpp; llama.cpp's per-tensor type
  mixtures and requantizing a file with them (chapter 2)
- ``gguf``       the GGUF file: a hardened lazy reader and an atomic writer (chapter 3)
- ``loading``    eager, lazy (mmap) and partial loads of GGUF, safetensors and .pt, measured (chapter 4)
- ``runtime``    a small llama runtime on labkit's own GGUF stack, with per-token transfer accounting
  (chapter 5)
- ``staging``    a model larger than memory: placement under a budget, pipelined layer streaming
  (chapter 6)
- ``journey``    the capstone: every stage on one model, measured beside predicted (chapter 7)

Cross-cutting modules at the root:

- ``formats``     the table of ggml block layouts
- ``modelfiles``  the default model, and synthetic llama-shaped GGUF files of any size
- ``errors``      the one family of errors labkit raises
- ``peers``       opening llama.cpp (optional) wherever labkit is checked against it
- ``classroom``   student copies of the notebooks: every exercise's solution replaced by a stub
- ``cli``         the ``labkit`` command line, one module per chapter

On top, one module per chapter name: ``figures`` (plotly), ``widgets`` (ipywidgets) and ``checks``
(the exercises' verdicts). Imports run one way: formats -> gguf -> runtime / loading / staging ->
journey -> figures / widgets -> cli / notebooks; ``hierarchy`` stands alone. The core (everything but
``figures`` and ``widgets``) imports with torch, numpy and gguf only, plus tokenizers and jinja2 for
the runtime.
"""

from __future__ import annotations

__version__ = "0.1.0"
