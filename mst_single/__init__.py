"""vocal-mst: learn a producer's vocal mixing style from raw/mixed pairs.

A single-track adaptation of Diff-MST (Vanka, Steinmetz et al., "Diff-MST: Differentiable Mixing
Style Transfer", ISMIR 2024). Two approaches are compared everywhere:

- ``approach1`` (mixed-as-reference): raw vocal + a mixed vocal as the reference -> parameters.
- ``approach2`` (direct): raw vocal only -> parameters of the producer's house style.
"""

__version__ = "0.1.0"
