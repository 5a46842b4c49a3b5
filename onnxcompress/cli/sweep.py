"""`onnxcompress sweep`: a grid of configs over many models; parses flags and renders progress, the library runs it."""
from __future__ import annotations

import sys

import click

from .common import emit, handle_errors, json_option


class SweepDisplay:
    """The sweep's progress on stderr: one line rewritten in place on a TTY, else one line per finished or
    resubmitted job (CI logs stay short)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled, self.tty, self.width = enabled, sys.stderr.isatty(), 0

    def __call__(self, p) -> None:
        if not self.enabled:
            return
        text = f"[sweep] {p.line()}"
        if self.tty:
            click.echo("\r" + text.ljust(self.width), err=True, nl=False)
            self.width = len(text)
            if p.event and not p.event.startswith("started") and not p.event.endswith(" done"):
                click.echo("\n[sweep] " + p.event, err=True)  # failures, resubmits, "nothing to run"
                self.width = 0
        elif not p.event.startswith("started"):
            click.echo(f"{text} | {p.event}", err=True)

    def close(self) -> None:
        if self.enabled and self.tty and self.width:
            click.echo("", err=True)


def _per_model(items) -> dict:
    out = {}
    for item in items:
        key, sep, rest = item.partition("=")
        cal, _, val = rest.partition(",")
        if not sep or not key.strip() or not (cal.strip() or val.strip()):
            raise click.BadParameter(f"'{item}' is not MODEL=CALIBRATION[,VALIDATION], e.g. net.onnx=cal.npz,val.npz",
                                     param_hint="--data")
        out[key.strip()] = (cal.strip() or None, val.strip() or None)
    return out


@click.command("sweep")
@click.argument("models", nargs=-1, required=True)
@click.option("--grid", "grid_file", required=True, type=click.Path(),
              help="YAML or JSON: config keys (dotted, e.g. quant.per_channel, prune.ratio) -> lists of values.")
@click.option("-o", "--output-dir", required=True, type=click.Path(file_okay=False),
              help="Sweep folder: jobs/<hash>/ per job, sweep.json and sweep.html; re-running resumes it.")
@click.option("--config", type=click.Path(), help="Base PipelineConfig JSON that the grid varies (default: the defaults).")
@click.option("--calibration", "-c", type=click.Path(), help="Calibration data for every model.")
@click.option("--validation", "-v", type=click.Path(), help="Validation data for every model (for the task metric).")
@click.option("--data", "per_model", multiple=True, metavar="MODEL=CAL[,VAL]",
              help="Data of one model (its path or file stem), over -c/-v; repeat per model.")
@click.option("--gate", "gate_exprs", multiple=True, metavar="EXPR",
              help="A gate every job checks, e.g. 'agreement>=99' (added to the config's gates).")
@click.option("--backend", type=click.Choice(["local", "ray"]), default="local", show_default=True)
@click.option("--workers", type=int, default=None,
              help="local: worker processes [CPUs / --cpus-per-worker]; ray without --address: the local Ray's size.")
@click.option("--cpus-per-worker", type=int, default=1, show_default=True,
              help="CPUs per job = ONNX Runtime intra-op threads of its sessions.")
@click.option("--address", default=None, help="ray: auto or ray://HOST:PORT (default: start a local Ray for this sweep).")
@click.option("--retry-failed", is_flag=True, help="Run the jobs that failed before again (finished ones stay skipped).")
@click.option("--objective", type=click.Choice(["size", "latency"]), default="size", show_default=True,
              help="What 'best' minimises among the configs that pass the gates.")
@json_option
@handle_errors
def sweep_cmd(models, grid_file, output_dir, config, calibration, validation, per_model, gate_exprs, backend, workers,
              cpus_per_worker, address, retry_failed, objective, as_json):
    """Convert every MODEL with every configuration of a grid, one job each, on a local process pool or a Ray
    cluster. Finished jobs are skipped on a re-run; a failed job is recorded and the others go on. Writes
    OUT/sweep.json and OUT/sweep.html: per model the Pareto fronts and the best configuration under the gates.
    Exit 1 when a job failed."""
    from ..config import PipelineConfig, load_config
    from ..errors import ConfigError
    from ..sweep import read_grid, run_sweep, with_gates
    from ..sweep.merge import summary_lines

    if address and backend != "ray":
        raise ConfigError("--address is for --backend ray; add --backend ray or drop --address")
    grid = read_grid(grid_file)
    base = with_gates(load_config(config) if config else PipelineConfig(), gate_exprs)
    display = SweepDisplay(not as_json)
    try:
        report = run_sweep(models, grid, output_dir, base, _per_model(per_model), calibration, validation,
                           backend=backend, workers=workers, cpus_per_worker=cpus_per_worker, address=address,
                           retry_failed=retry_failed, objective=objective, progress=display)
    except KeyboardInterrupt:
        display.close()
        click.echo(f"error: interrupted; finished jobs are kept in {output_dir}/jobs, re-run the same command to "
                   "run the rest", err=True)
        sys.exit(130)
    display.close()
    emit(as_json, report, "\n".join(summary_lines(report)) + f"\n\nreport: {', '.join(report['files'])}")
    if report["totals"]["failed"]:
        sys.exit(1)


COMMANDS = [sweep_cmd]
