"""`prune-distill`: torch-side pruning, fine-tuning by distillation from the original, export, removal."""
from __future__ import annotations

import click

from ..config import TrainConfig
from .common import emit, handle_errors, json_option


@click.command("prune-distill")
@click.argument("factory")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Output .onnx (channels removed).")
@click.option("--weights", type=click.Path(), help="State dict: .pt/.pth (weights_only) or .safetensors.")
@click.option("--input", "input_spec", required=True, help="NAME:Nx1x28x28[:dtype] (one input).")
@click.option("--data", "-d", required=True, type=click.Path(), help="Training data .npz (labels optional; unused unless --alpha > 0).")
@click.option("--val", "-v", "val", type=click.Path(), help="Validation .npz for early stopping and the numbers (top-1 with labels).")
@click.option("--ratio", type=float, default=TrainConfig.ratio, show_default=True, help="Share of channels (or weights with --unstructured).")
@click.option("--unstructured", is_flag=True, help="L1 weight sparsity instead of channels (smaller compressed file, not faster).")
@click.option("--steps", type=int, default=TrainConfig.steps, show_default=True, help="Iterative schedule: prune ratio/steps more each step.")
@click.option("--epochs", type=int, default=TrainConfig.epochs, show_default=True, help="Fine-tuning epochs per step (0 = no fine-tuning).")
@click.option("--lr", type=float, default=TrainConfig.lr, show_default=True)
@click.option("--batch-size", type=int, default=TrainConfig.batch_size, show_default=True)
@click.option("--temperature", type=float, default=TrainConfig.temperature, show_default=True)
@click.option("--alpha", type=float, default=TrainConfig.alpha, show_default=True, help="Cross-entropy weight when labels exist.")
@click.option("--loss", type=click.Choice(["kl", "mse"]), default=TrainConfig.loss, show_default=True)
@click.option("--checkpoint-dir", type=click.Path(file_okay=False))
@json_option
@handle_errors
def prune_distill_cmd(factory, output, weights, input_spec, data, val, ratio, unstructured, steps, epochs, lr, batch_size,
                      temperature, alpha, loss, checkpoint_dir, as_json):
    """Prune a torch model, win accuracy back by distilling from the original, export and shrink to ONNX."""
    import sys

    from ..data import InputSpec, load_data
    from ..io import check_output_path
    from ..torchload import load_any, parse_input_spec
    from ..train.distill import progress
    from ..train.run import prune_and_distill

    cfg = TrainConfig(enabled=True, ratio=ratio, structured=not unstructured, steps=steps, epochs=epochs, lr=lr,
                      batch_size=batch_size, temperature=temperature, alpha=alpha, loss=loss, checkpoint_dir=checkpoint_dir)
    cfg.validate()
    spec = parse_input_spec(input_spec)
    out = check_output_path(output, weights, data, val)
    import numpy as np

    ispec = [InputSpec(spec.name, ("N",) + spec.shape[1:], np.dtype(spec.dtype))]
    train = load_data(data, ispec)
    valid = load_data(val, ispec) if val else None
    module = load_any(factory, weights)
    x = np.concatenate([c[spec.name] for c in train.chunks])
    vx = np.concatenate([c[spec.name] for c in valid.chunks]) if valid else None
    rec = prune_and_distill(module, [spec], x, out, cfg, train_y=train.labels, val_x=vx,
                            val_y=valid.labels if valid else None, show=None if as_json else progress)
    s = rec.stats
    rm = s["onnx_removal"]
    lines = [f"wrote {out}", f"{s['metric']}: original {s['teacher_metric']:.2f}, pruned without fine-tuning "
             f"{s['pruned_no_finetune_metric']:.2f}, pruned + distilled {s['final_metric']:.2f}",
             f"params {rm['params_before']:,} -> {rm['params_after']:,}, MACs {rm['macs_before']:,} -> {rm['macs_after']:,}"]
    if not as_json:
        sys.stderr.write("\n")
    emit(as_json, rec.to_dict(), "\n".join(lines))


COMMANDS = [prune_distill_cmd]
