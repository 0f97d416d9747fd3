"""`python -m scenarios run FILE...` plays scenario files for real; `list` shows the shipped ones."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from scenarios import report
from scenarios.runner import Runner
from scenarios.spec import ScenarioError, load
from wire.signals import unwind_on_signals

SHIPPED = Path(__file__).resolve().parent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scenarios", description="run ballonet scenario files")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run scenario files and report")
    run.add_argument("files", nargs="+", type=Path, help="scenario TOML files (or names of shipped ones)")
    run.add_argument("--out", type=Path, default=Path("out"), help="where reports, series and plots go (default ./out)")
    run.add_argument("--quiet", action="store_true", help="no live progress")
    sub.add_parser("list", help="the scenarios shipped with ballonet")
    args = parser.parse_args(argv)
    # SIGTERM and Ctrl-C unwind, so the runner's `finally` stops every process it started; a
    # second one cannot cut that short.
    unwind_on_signals()

    if args.command == "list":
        for path in sorted(SHIPPED.glob("*.toml")):
            s = load(path)
            print(f"{path.stem:<22} {s.description}")
        return 0

    failed = 0
    for path in args.files:
        if not path.exists() and (SHIPPED / f"{path}.toml").exists():
            path = SHIPPED / f"{path}.toml"
        try:
            scenario = load(path)
        except ScenarioError as err:
            print(f"scenario error: {err}", file=sys.stderr)
            return 2
        print(f"== {scenario.name}: {scenario.description}")
        progress = report.Progress()
        runner = Runner(scenario, None if args.quiet else progress.sample, None if args.quiet else progress.step)
        out_dir = args.out / scenario.name
        try:
            result = runner.run(out_dir)
        finally:
            runner.procs.stop_all()  # none left after a whole run; some if a signal came during its cleanup
        paths = report.write(result, out_dir)
        print(report.text(result))
        print(f"  wrote {', '.join(str(p) for p in paths)} and logs/ there")
        failed += not result.passed
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
