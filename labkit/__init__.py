"""labkit: measure how model weights travel disk -> RAM -> VRAM.

Modules, in reading order (one per stage of a weight's journey):

- ``probe``      this machine's I/O tiers, measured (chapter 1)
- ``formats``    the table of ggml block layouts
- ``quant``      GGML block quantization, byte-identical to llama.cpp (chapter 2)
- ``gguf``       the GGUF file: a hardened lazy reader and an atomic writer (chapter 3)
- ``model``      a small llama runtime on labkit's own GGUF stack (chapter 5)
- ``models``     the default model and synthetic llama-shaped files
- ``figures``, ``widgets``  plotly figures and ipywidgets panels (need the lab extras)
- ``cli``        the ``labkit`` command line
- ``errors``     the one family of errors labkit raises

The core imports with torch, numpy and gguf only.
"""

from __future__ import annotations

__version__ = "0.1.0"
