"""The runtime base: ONNX Runtime sessions and providers (session.py), and reading intermediate tensors in
passes and batches sized to a memory budget (budget.py). Everything that runs a model builds on this;
nothing here imports evaluate/, quant/ or passes/."""
