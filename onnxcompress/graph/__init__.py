"""One graph view (`view.GraphView`) and one weight-layer matcher (`layers.match_layer`), used by every pass."""
from .layers import Mismatch, WeightLayer, in_out, match_layer, weight_axes
from .view import GraphView, attr, node_name, set_attr

__all__ = ["GraphView", "Mismatch", "WeightLayer", "attr", "in_out", "match_layer", "weight_axes", "node_name", "set_attr"]
