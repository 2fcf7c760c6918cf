"""The ``sweeplr`` command: look at runs and sweeps after the fact.

Each subcommand is one small function; user mistakes print one ``error:`` line and exit 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from sweeplr import __version__
from sweeplr.errors import SweeplrError
from sweeplr.predict import add_predict_parser
from sweeplr.records import METRICS_FILE, MODEL_FILE
from sweeplr.results import add_summary_parser

Command = Callable[[argparse.Namespace], int]


def cmd_show(args: argparse.Namespace) -> int:
    """Print a finished run's report block again."""
    from sweeplr.console import format_report
    from sweeplr.records import read_metrics

    print(format_report(read_metrics(args.run_dir), Path(args.run_dir)))
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sweeplr", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"sweeplr {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    show = commands.add_parser("show", help="print a run's results again")
    show.add_argument("run_dir", help="a run directory (holds metrics.json)")
    show.set_defaults(func=cmd_show)
    add_summary_parser(commands)
    add_predict_parser(commands)
    plot = commands.add_parser("plot", help="draw a run's or a sweep's pictures")
    plot.add_argument("dir", help="a run directory (model.pt) or a sweep directory")
    plot.set_defaults(func=cmd_plot)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except SweeplrError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
