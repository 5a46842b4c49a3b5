"""One graph view (`view.GraphView`) and one weight-layer matcher (`layers.match_layer`), used by every pass."""
from .layers import Mismatch, WeightLayer, match_layer
from .view import GraphView, attr, node_name, set_attr

__all__ = ["GraphView", "Mismatch", "WeightLayer", "attr", "match_layer", "node_name", "set_attr"]
