"""Real runs of compression strategies (quantize, prune, distill, low-rank) and their measurement.

Needs the ``exec`` extra (torch, transformers, bitsandbytes): ``pip install "fitplan[exec]"``.
"""
