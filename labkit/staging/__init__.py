"""Staged loading (chapter 6): when the model does not fit, stream its layers through a pipeline.

Modules, in reading order:

- ``layers``    each layer of a GGUF model: byte ranges in the file, tensors in a slot
- ``plan``      where each layer lives (gpu / cpu / disk) under a VRAM and a RAM budget
- ``reader``    chunked, page-aligned ``pread`` (optionally ``O_DIRECT``) into staging buffers
- ``slots``     a layer's tensors as views of flat byte slots, and the dequantize step that fills them
- ``executor``  the pipeline: read -> staging buffer -> device slot -> compute, overlapped
- ``trace``     spans, the pass's summary, link models and projections for a GPU not present
- ``streamed``  the real model streamed: a weights provider for ``labkit.runtime.Model``

Example:
    >>> from labkit import staging
    >>> model = staging.load(path, ram=64 << 20)       # on a CPU: "VRAM" is the RAM budget
    >>> print(model.weights.plan.explain())
    >>> logits, trace = staging.trace_pass(model, model.prompt_ids("The GPU reads"))
    >>> trace.summary().to_dict()
"""

from __future__ import annotations

from labkit.staging.executor import Stager
from labkit.staging.layers import LayerSpec, layer_specs
from labkit.staging.plan import TIERS, Placement, Plan, Reservation, plan_layers
from labkit.staging.reader import aligned_range, layer_chunks, read_ranges
from labkit.staging.streamed import StreamedWeights, load, reserve_bytes, trace_pass
from labkit.staging.trace import LINK_PRESETS, LinkModel, Span, Trace, TraceSummary, project

__all__ = [
    "LINK_PRESETS",
    "TIERS",
    "LayerSpec",
    "LinkModel",
    "Placement",
    "Plan",
    "Reservation",
    "Span",
    "Stager",
    "StreamedWeights",
    "Trace",
    "TraceSummary",
    "aligned_range",
    "layer_chunks",
    "layer_specs",
    "load",
    "plan_layers",
    "project",
    "read_ranges",
    "reserve_bytes",
    "trace_pass",
]
