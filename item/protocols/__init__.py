"""The field's benchmarks as data, and the runs that reproduce their tables.

``registry``: the benchmark protocols (one JSON file each, beside this module). ``layout``: check a
data folder against a protocol and turn it into labelled rows. ``reproduce``: layout check ->
featurize -> train heads -> evaluate with the protocol's real pairing -> tables beside the anchors.
``robustness``: one head evaluated on perturbed copies of a test set.
"""

from item.protocols.registry import get_protocol, protocol_names

__all__ = ["get_protocol", "protocol_names"]
