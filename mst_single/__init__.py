"""vocal-mst: learn a producer's vocal mixing style from raw/mixed pairs.

A single-track adaptation of Diff-MST (Vanka, Steinmetz et al., "Diff-MST: Differentiable Mixing
Style Transfer", ISMIR 2024). Two approaches are compared everywhere:

- ``approach1`` (mixed-as-reference): raw vocal + a mixed vocal as the reference -> parameters.
- ``approach2`` (direct): raw vocal only -> parameters of the producer's house style.
"""

__version__ = "0.1.0"

import os as _os

# torch's OpenMP threads spin while they wait for each other; on a shared or loaded CPU that costs
# 5-10x CPU time (measured for issue 6). It must be set before torch is first imported.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
