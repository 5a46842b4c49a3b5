"""Torch side: magnitude pruning made permanent as zeros, fine-tuning with knowledge distillation.

    prune.structured_masks / unstructured_masks -> Masks (apply, merge, sparsity)
    distill.distill (kd_loss, evaluate)          -> fine-tune a student against the original
    shrink.shrink                                -> a physically smaller copy for fast fine-tuning
    run.prune_and_distill                        -> prune, distill, export, remove channels in ONNX

torch is imported inside the functions, so importing this package does not need it.
"""
