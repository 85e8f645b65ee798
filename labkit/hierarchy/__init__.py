"""The memory hierarchy, measured (chapter 1): disk, page cache, RAM and, where present, the GPU.

Modules, in reading order:

- ``memory``     how much RAM this process may really use: the container's cgroup limit, not the host's
- ``pagecache``  which pages of a file sit in RAM; evicting them, and checking that it worked
- ``tiers``      the rows of the speed table: measured, quoted or modelled, each with its source
- ``probe``      measures this machine's tiers and returns a ``ProbeReport``

This package stands alone: it imports nothing else from labkit but ``errors``.
"""

from __future__ import annotations
