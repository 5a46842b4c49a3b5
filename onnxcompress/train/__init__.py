"""Torch side: magnitude pruning made permanent as zeros, fine-tuning with knowledge distillation."""
