"""The one small family of errors labkit raises.

Every error a student can trigger with bad input is a ``LabkitError``, so a
notebook can catch them all with one ``except``. Messages say what was wrong,
what was expected, and how to fix it.
"""

from __future__ import annotations


class LabkitError(Exception):
    """Base class of every error labkit raises on purpose."""


class GGUFFormatError(LabkitError, ValueError):
    """A GGUF file is malformed, truncated or hostile.

    The message names the byte offset and the field that failed.
    """


class QuantizationError(LabkitError, ValueError):
    """A tensor cannot be quantized: NaN/Inf values, a bad row length, a bad dtype."""


class ModelError(LabkitError, ValueError):
    """A model file or prompt is not something the runtime can run."""


class ProbeError(LabkitError):
    """A measurement cannot be made as asked (no space, no RAM, unwritable folder)."""


class ModelNotInstalledError(LabkitError, FileNotFoundError):
    """The default model's package is not installed."""


class OutputPathError(LabkitError, OSError):
    """A file cannot be written where asked: its folder is missing or read-only, or the path is a folder."""


class MissingInputError(LabkitError, FileNotFoundError):
    """An input file does not exist; the message names the path."""


class LoadError(LabkitError, ValueError):
    """Weights cannot be loaded as asked: an unknown format, a checkpoint that ``weights_only``
    refuses, a malformed safetensors header, layers that the file does not have."""


class PlanError(LabkitError, ValueError):
    """Layers cannot be placed as asked: a budget too small for what streaming needs, or a bad setting."""


class DeviceUnavailableError(LabkitError, RuntimeError):
    """A GPU pass was asked for on a machine without one, and no link model was given to project it."""


class StagingError(LabkitError, ValueError):
    """Staged loading cannot run as asked: a bad option, an I/O mode this system refuses, a file that changed."""


class SolutionMarkerError(LabkitError, ValueError):
    """An exercise's ``### BEGIN SOLUTION`` / ``### END SOLUTION`` markers are unclosed, nested or misspelt."""


class MissingTensorError(LabkitError, KeyError):
    """A file has no tensor of the name asked for; the message names it and how to list the names."""

    def __str__(self) -> str:  # KeyError would show the message in quotes
        return str(self.args[0]) if self.args else ""


class ClosedFileError(LabkitError, ValueError):
    """A file was used after ``close()`` (or after its ``with`` block ended)."""
