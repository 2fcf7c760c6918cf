"""The ``sweeplr`` command: look at runs and sweeps after the fact.

Each subcommand is one small function; user mistakes print one ``error:`` line and exit 2.
Building the parser imports nothing heavy: a subcommand imports pandas, torch or Hydra only
when it runs, so ``sweeplr --help`` answers at once.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sweeplr import __version__
from sweeplr.errors import SweeplrError
from sweeplr.records import METRICS_FILE, MODEL_FILE
from sweeplr.schema import FORMATS

if TYPE_CHECKING:
    from sweeplr.predict import TrainedModel

Command = Callable[[argparse.Namespace], int]


def cmd_show(args: argparse.Namespace) -> int:
    """Print a finished run's report block again."""
    from sweeplr.console import format_report
    from sweeplr.records import read_metrics

    print(format_report(read_metrics(args.run_dir), Path(args.run_dir)))
    return 0


def cmd_summary(args: argparse.Namespace) -> int:
    """Print (or save) the table of one or more sweeps (pandas is loaded here, not for every
    subcommand)."""
    from sweeplr.results import compact, format_table, group_runs, load_sweep, sort_runs

    if args.out is not None:
        check_out_file(args.out)
    df = load_sweep(args.dirs)
    if args.group_by is not None:
        df = group_runs(df, [c.strip() for c in args.group_by.split(",") if c.strip()])
    if args.sort is not None or args.ascending is not None:
        df = sort_runs(df, args.sort or "objective", args.ascending)
    if args.format in ("table", "markdown") and not args.all_columns:
        df = compact(df)
    text = format_table(df, args.format, args.top)
    if args.out is None:
        print(text)
        return 0
    write_out_file(args.out, text + "\n")
    return 0


def check_out_file(out: str) -> None:
    """``--out FILE``, checked before the work whose result it is to hold."""
    from sweeplr.records import require_writable

    if Path(out).is_dir():
        raise SweeplrError(f"--out={out} is a directory; allowed: a file name")
    require_writable("--out", out, Path(out).parent)


def write_out_file(out: str, text: str) -> None:
    """Write ``--out FILE`` whole or not at all; a disk that fails now is one line."""
    from sweeplr.records import atomic_write_text

    try:
        atomic_write_text(out, text)
    except OSError as exc:
        raise SweeplrError(f"--out={out} could not be written: {exc.strerror or exc}") from None


def cmd_predict(args: argparse.Namespace) -> int:
    """Predict one point given on the command line, or every row of a CSV file, with a run's
    model (torch is loaded here, not for every subcommand)."""
    from sweeplr.predict import best_run_dir, load_run, parse_point

    run_dir = Path(args.run_dir)
    values = [*args.values, *(args.best or [])]
    if args.best is not None:
        run_dir = best_run_dir(run_dir)
        print(f"best run: {run_dir}")
    elif not (run_dir / MODEL_FILE).exists() and any(run_dir.glob(f"*/{METRICS_FILE}")):
        raise SweeplrError(f"{run_dir} is a sweep directory; add --best to use its best run")
    if args.out is not None and args.csv is not None:
        check_out_file(args.out)
    trained = load_run(run_dir)
    if args.csv is not None:
        if values:
            raise SweeplrError("give feature values or --csv, not both")
        return _predict_csv(trained, args.csv, args.out)
    if not values:
        raise SweeplrError(
            f"no input; allowed: {trained.n_features} feature values "
            f"({', '.join(trained.feature_names)}) or --csv FILE"
        )
    if args.out is not None:
        raise SweeplrError("--out needs --csv")
    proba = trained.predict_proba(parse_point(values, trained))[0]
    best = int(proba.argmax())
    print(f"{trained.class_names[best]}  p={proba[best]:.4f}")
    print(
        "  " + "  ".join(f"p_{n}={p:.4f}" for n, p in zip(trained.class_names, proba, strict=True))
    )
    return 0


def _predict_csv(trained: TrainedModel, csv: str, out: str | None) -> int:
    """Predict every row of ``csv``; print the predictions, or write them to ``out``."""
    from sweeplr.data import read_frame
    from sweeplr.predict import predictions_frame

    if not Path(csv).is_file():
        raise SweeplrError(f"--csv {csv} does not exist; allowed: a CSV or Parquet file")
    frame = predictions_frame(trained, read_frame(csv), source=csv)
    text = frame.to_csv(index=False)
    if out is None:
        print(text, end="")
    else:
        write_out_file(out, text)
        print(f"wrote {len(frame)} predictions to {out}")
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    """Plot a run (it holds ``model.pt``) or a sweep (plus its best run and ``report.html``)."""
    target = Path(args.dir)
    if (target / MODEL_FILE).is_file():
        from sweeplr.plots import plot_run

        written = plot_run(target)
    elif any(target.glob(f"*/{METRICS_FILE}")):
        from sweeplr.report import draw_sweep

        written = draw_sweep(target)
    else:
        raise SweeplrError(f"{target} holds no run record; allowed: a run or a sweep directory")
    for path in written:
        print(f"wrote {path}")
    return 0


def compose_app_config(config_dir: str, overrides: Sequence[str]) -> Any:
    """The config ``python train.py OVERRIDES`` would see, composed from ``config_dir``."""
    from hydra import compose, initialize_config_dir

    from sweeplr.config import register_configs
    from sweeplr.errors import first_line
    from sweeplr.overrides import check_overrides

    path = Path(config_dir).resolve()
    if not (path / "config.yaml").is_file():
        raise SweeplrError(
            f"--config-dir={config_dir} holds no config.yaml; allowed: sweeplr's conf/ folder "
            "(run from the project's folder, or name it)"
        )
    check_overrides(overrides, path)  # train.py's check: one line where Hydra would mislead
    register_configs()
    try:
        with initialize_config_dir(config_dir=str(path), job_name="lr_find"):
            return compose(config_name="config", overrides=list(overrides))
    except Exception as exc:  # noqa: BLE001 - Hydra's many errors, each a user mistake here
        cause = exc.__cause__
        detail = f": {first_line(cause)}" if cause is not None else ""
        raise SweeplrError(f"{first_line(exc)}{detail}") from None


def cmd_lr_find(args: argparse.Namespace) -> int:
    """Train every lr of a range, suggest one, and write ``lr_find.csv`` and ``lr_find.png``."""
    from datetime import datetime

    from sweeplr.lr_find import check_budget, check_out_dir, find_lr, lr_range, write_finding
    from sweeplr.spec import run_spec

    lrs = lr_range(args.min_lr, args.max_lr, args.num)
    out = Path(args.out or f"lr_find/{datetime.now():%Y-%m-%d/%H-%M-%S-%f}")
    check_out_dir(out, args.out or str(out))
    if args.epochs is not None:
        check_budget(args.epochs)
    overrides = [*args.overrides, *lr_find_budget(args.epochs, args.overrides)]
    cfg = compose_app_config(args.config_dir, overrides)
    spec = run_spec(cfg, overrides)  # validated with the budget: a warm-up must fit in it
    finding = find_lr(spec, lrs, spec.epochs)
    title = f"lr finder: {spec.data.dataset['name']}, {spec.optimizer.name}, {len(lrs)} lrs"
    table, picture = write_finding(finding, out, title)
    if finding.suggestion is None:
        print(f"sweeplr: every lr diverged within {finding.epochs} epochs; try a lower --max-lr")
    else:
        best = next(r for r in finding.rows if r["lr"] == finding.suggestion)
        kept = [o for o in args.overrides if not o.startswith("lr=")]
        print(
            f"sweeplr: suggested lr {finding.suggestion:.3g} (lowest {finding.metric} after "
            f"{finding.epochs} epochs: {best['loss']:.4g}; {finding.diverged} of {len(lrs)} lrs "
            "diverged)"
        )
        print(f"  python train.py {' '.join([*kept, f'lr={finding.suggestion:.3g}'])}")
    print(f"  {table}")
    print(f"  {picture}")
    return 0


LR_FIND_EPOCHS = 100  # each lr's budget when neither --epochs nor epochs= names one


def lr_find_budget(epochs: int | None, overrides: Sequence[str]) -> list[str]:
    """The override that sets each lr's budget: ``--epochs`` or an ``epochs=`` override (then
    none is added), never both; 100 epochs when neither is given."""
    from sweeplr.validation import typed_values

    typed = typed_values(overrides).get("epochs")
    if typed is None:
        return [f"epochs={epochs or LR_FIND_EPOCHS}"]
    if epochs is not None:
        raise SweeplrError(
            f"--epochs {epochs} and epochs={typed} both set each lr's budget; allowed: one of them"
        )
    return []


def add_command(commands: Any, name: str, summary: str, description: str, example: str) -> Any:
    """A subcommand whose help has a description and one example, printed as written."""
    return commands.add_parser(
        name,
        help=summary,
        description=description,
        epilog=f"example:\n  {example}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1, or argparse's one-line error naming the text."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is invalid; allowed: an integer >= 1")
    return value


def add_summary_parser(commands: Any) -> None:
    """Register ``sweeplr summary`` on the subparsers object of ``build_parser``."""
    parser = add_command(
        commands,
        "summary",
        "a sweep's runs as one table, best first",
        "One row per run directory of the given sweeps, best objective first; every\n"
        "column is in the sweep's summary.csv.",
        "sweeplr summary multirun/seeds --group-by optimizer,lr",
    )
    parser.add_argument(
        "dirs", nargs="+", metavar="DIR", help="a sweep directory (multirun/...) or run directory"
    )
    parser.add_argument("--sort", metavar="COL", help="sort by this column (default: objective)")
    order = parser.add_mutually_exclusive_group()
    order.add_argument("--ascending", action="store_true", help="smallest first")
    order.add_argument("--descending", dest="ascending", action="store_false", help="largest first")
    parser.set_defaults(ascending=None)  # neither: best first, judged from the column's name
    parser.add_argument("--top", type=positive_int, metavar="N", help="show the first N rows")
    parser.add_argument("--format", choices=FORMATS, default="table", help="output format")
    parser.add_argument(
        "--group-by",
        metavar="COL1,COL2",
        help="one row per distinct value of these columns: mean and std over the rest (seeds)",
    )
    parser.add_argument("--out", metavar="FILE", help="write to FILE instead of the terminal")
    parser.add_argument(
        "--all-columns",
        action="store_true",
        help="table/markdown: every column (default: swept values and main metrics)",
    )
    parser.set_defaults(func=cmd_summary)


def add_predict_parser(commands: Any) -> None:
    """Register ``sweeplr predict`` on the subparsers object of ``build_parser``."""
    parser = add_command(
        commands,
        "predict",
        "predict classes of new data with a trained run",
        "Predict with a run's model from raw feature values, as the data set holds them\n"
        "(the run's own scaler is applied): one point given on the command line, or every\n"
        "row of a CSV.",
        "sweeplr predict multirun/seeds --best 1.0 1.0",
    )
    parser.usage = (
        "sweeplr predict [-h] RUN_DIR [VALUE ...] [--csv FILE [--out FILE]]\n"
        "       sweeplr predict [-h] SWEEP_DIR --best [VALUE ...] [--csv FILE ...]"
    )
    parser.add_argument(
        "run_dir",
        metavar="RUN_DIR",
        help="a run directory (holds model.pt), or a sweep with --best",
    )
    parser.add_argument(
        "values", nargs="*", metavar="VALUE", help="one point's feature values, in the run's order"
    )
    parser.add_argument(
        "--csv", metavar="FILE", help="predict every row of this CSV (columns: the features)"
    )
    parser.add_argument(
        "--out", metavar="FILE", help="with --csv: write the predictions to this CSV file"
    )
    # nargs="*": argparse gives a positional nothing once an option comes between, so
    # `predict SWEEP --best 1 1` would leave "1 1" unparsed; --best collects them instead.
    parser.add_argument(
        "--best",
        nargs="*",
        metavar="VALUE",
        help="RUN_DIR is a sweep: use its best run (the point's values may follow --best)",
    )
    parser.set_defaults(func=cmd_predict)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sweeplr",
        description="Look at sweeplr's runs and sweeps after the fact: tables, predictions,\n"
        "pictures; and an lr finder. Runs and sweeps themselves start with train.py.",
        epilog="examples:\n"
        "  sweeplr summary multirun/seeds --sort test_accuracy --top 3\n"
        "  sweeplr predict RUN_DIR 1.0 1.0\n"
        "  sweeplr COMMAND --help      (each command's options and an example)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"sweeplr {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    show = add_command(
        commands,
        "show",
        "print a run's results again",
        "Print a finished run's report block again: its metrics per split, its objective.",
        "sweeplr show outputs/2026-11-28/10-00-00-000000",
    )
    show.add_argument("run_dir", metavar="RUN_DIR", help="a run directory (holds metrics.json)")
    show.set_defaults(func=cmd_show)
    add_summary_parser(commands)
    add_predict_parser(commands)
    finder = add_command(
        commands,
        "lr-find",
        "train a range of learning rates, each its own run, and suggest one",
        "Train a log-spaced range of learning rates, each its own configuration in one\n"
        "batched pass from the same start, for a short budget; write lr_find.csv and\n"
        "lr_find.png and print the lr with the lowest final loss. Run it in the project's\n"
        "folder (it reads conf/).",
        "sweeplr lr-find optimizer=adam dataset=breast_cancer --epochs 200",
    )
    finder.add_argument("overrides", nargs="*", help="config overrides, as for train.py")
    finder.add_argument("--min-lr", type=float, default=1e-5, help="smallest lr (1e-5)")
    finder.add_argument("--max-lr", type=float, default=10.0, help="largest lr (10)")
    finder.add_argument("--num", type=int, default=40, help="how many lrs (40)")
    finder.add_argument(
        "--epochs", type=int, help="each lr's budget (100), as an epochs= override would set it"
    )
    finder.add_argument("--out", metavar="DIR", help="where to write (lr_find/DATE/TIME)")
    finder.add_argument(
        "--config-dir", metavar="DIR", default="conf", help="sweeplr's conf/ folder (conf)"
    )
    finder.set_defaults(func=cmd_lr_find)
    plot = add_command(
        commands,
        "plot",
        "draw a run's or a sweep's pictures",
        "Draw a run's pictures (loss curve, decision boundary), or a sweep's (its runs,\n"
        "its best run's, an Optuna study's) and its report.html, beside the records.",
        "sweeplr plot multirun/seeds",
    )
    plot.add_argument("dir", metavar="DIR", help="a run directory (model.pt) or a sweep directory")
    plot.set_defaults(func=cmd_plot)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from sweeplr.console import guard_stdout

    guard_stdout()  # `sweeplr summary ... | head` ends the printing, quietly
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except SweeplrError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
