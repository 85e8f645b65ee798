"""The static-shape decode step behind the CUDA graph equals the ordinary forward pass.

On the CPU the step runs eagerly (``use_graph=False``): same computation the graph records. The
graph itself needs a GPU (marker ``gpu``; scripts/gpu_check_graphs.py measures it there).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from labkit.errors import ModelError
from labkit.runtime.graphs import StaticDecoder
from labkit.runtime.model import load


@pytest.fixture(scope="module")
def smol(default_model: Path):
    return load(default_model, dtype=torch.float32)


def test_static_step_equals_forward(smol) -> None:
    prompt = smol.tokenizer.encode("The GPU reads the weights")
    decoder = StaticDecoder(smol, max_length=len(prompt) + 4)
    cache = smol.new_cache()
    reference = smol.forward(prompt, cache)[0, -1]
    assert torch.equal(decoder.prefill(prompt), reference)
    token = int(reference.argmax())
    for _ in range(3):
        expected = smol.forward([token], cache)[0, -1]
        got = decoder.step(token)
        assert (got - expected).abs().max() < 1e-4
        assert int(got.argmax()) == int(expected.argmax())
        token = int(expected.argmax())


def test_static_decoder_refuses_what_it_cannot_record(smol, default_model: Path) -> None:
    with pytest.raises(ModelError, match="use_graph=True needs a CUDA model"):
        StaticDecoder(smol, 8, use_graph=True)
    with pytest.raises(ModelError, match="max_length=0"):
        StaticDecoder(smol, 0)
    decoder = StaticDecoder(smol, 3)
    with pytest.raises(ModelError, match="leaves no room"):
        decoder.prefill([1, 2, 3])
    decoder.prefill([1, 2])
    decoder.step(5)
    with pytest.raises(ModelError, match="static cache is full"):
        decoder.step(5)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_graph_replay_equals_eager(default_model: Path) -> None:
    model = load(default_model, device="cuda", dtype=torch.float32)
    prompt = model.tokenizer.encode("The GPU reads the weights")
    eager, graphed = (
        StaticDecoder(model, len(prompt) + 8),
        StaticDecoder(model, len(prompt) + 8, use_graph=True),
    )
    token = int(eager.prefill(prompt).argmax())
    graphed.prefill(prompt)
    for _ in range(6):
        a, b = eager.step(token), graphed.step(token)
        assert (a - b).abs().max() < 1e-4
        token = int(a.argmax())
