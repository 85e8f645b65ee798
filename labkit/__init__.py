"""labkit: measure how model weights travel disk -> RAM -> VRAM.

Modules, in reading order (one per stage of a weight's journey):

- ``probe``      this machine's I/O tiers, measured (chapter 1)
- ``tiers``      the rows of the speed table: measured, quoted or modelled, with sources
- ``pagecache``  which pages of a file sit in RAM; evicting them, and checking it
- ``formats``    the table of ggml block layouts
- ``quant``      GGML block quantization, byte-identical to llama.cpp (chapter 2)
- ``gguf``       the GGUF file: a hardened lazy reader and an atomic writer (chapter 3)
- ``mixtures``   llama.cpp's per-tensor type rules (Q4_K_M, ...)
- ``requant``    requantizing a GGUF file with those rules
- ``models``     the default model and synthetic llama-shaped files
- ``model``      a small llama runtime on labkit's own GGUF stack (chapter 5)
- ``tokenizer``  text <-> token ids from a GGUF file's metadata
- ``kvcache``    the KV cache a model keeps between tokens
- ``weights``    how a loaded model holds its weights: dense floats or quantized bytes
- ``transfers``  every byte a forward pass moves, hop by hop
- ``figures``, ``widgets``, ``checks``  plotly figures, ipywidgets panels (need the lab
  extras) and the exercises' checks, one module per chapter
- ``cli``        the ``labkit`` command line
- ``errors``     the one family of errors labkit raises
- ``peers``      opening llama.cpp (optional) the same way wherever labkit is checked against it

The core (everything but ``figures`` and ``widgets``) imports with torch, numpy and gguf
only, plus tokenizers and jinja2 for the runtime.
"""

from __future__ import annotations

__version__ = "0.1.0"
