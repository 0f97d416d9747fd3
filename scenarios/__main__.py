"""`python -m scenarios run FILE...` plays scenario files for real; `list` shows the shipped ones."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from scenarios import report
from scenarios.runner import Runner
from scenarios.spec import ScenarioError, load
from wire import security
from wire.signals import unwind_on_signals

SHIPPED = Path(__file__).resolve().parent

# The runner's exit status: every scenario passed; an expectation or step failed, or a process
# misbehaved (did not start, exited on its own with an error, unbalanced books); a file is bad
# (not found, not TOML, an unknown or mistyped key): nothing was run.
EXIT_PASSED, EXIT_FAILED, EXIT_BAD_FILE = 0, 1, 2


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

    scenarios = []
    for path in args.files:  # every file is checked before any process starts
        if not path.exists() and (SHIPPED / f"{path}.toml").exists():
            path = SHIPPED / f"{path}.toml"
        try:
            scenarios.append(load(path))
        except ScenarioError as err:
            print(f"scenario error: {err}", file=sys.stderr)
            return EXIT_BAD_FILE
    failed = []
    for scenario in scenarios:
        print(f"== {scenario.name}: {scenario.description}")
        progress = report.Progress()
        runner = Runner(scenario, None if args.quiet else progress.sample, None if args.quiet else progress.step)
        security.configure(runner.security)  # anything of this process that calls does so with the run's own key
        out_dir = args.out / scenario.name
        try:
            result = runner.run(out_dir)
        finally:
            runner.procs.stop_all()  # none left after a whole run; some if a signal came during its cleanup
        paths = report.write(result, out_dir)
        print(report.text(result))
        print(f"  wrote {', '.join(str(p) for p in paths)} and logs/ there")
        if not result.passed:
            failed.append(f"{scenario.name} ({report.why_failed(result)}; see {out_dir / 'report.txt'})")
    if failed:
        print(f"scenarios failed: {'; '.join(failed)}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_PASSED

if __name__ == "__main__":
    sys.exit(main())
