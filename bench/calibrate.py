"""Refit the cost model's constants (pd/cost/calibration.yaml) to measured rows, and show what changes.

Rows: calibration.yaml's own (unless --no-shipped) and those of each JSON given (``bench/cost_check.py``'s output
from ``make gpu-check``: same fields, measured on the GPU its ``gpu`` block names). The fit runs pd/cost's own
formulas with trial constants and minimises the squared relative errors of every measured field
(``pd.cost.fit.refit``: scipy least squares over the constants' logarithms, a small pull towards the current
values for constants the rows hardly measure). Printed: every fitted constant old -> new, every row's error before
and after, and the largest error of each. ``--write`` puts the new numbers into calibration.yaml in place (the
lines' comments and everything else kept); add the new rows there by hand with their source.

    python bench/calibrate.py                               # refit to the shipped rows (a consistency check)
    python bench/calibrate.py bench/cost_check.json          # shipped rows + a GPU check's
    python bench/calibrate.py --no-shipped gpu.json --write  # only the new rows, and write the constants
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

TOLERANCE = 0.15  # tests/test_cost.py's


def _pct(e) -> str:
    return "      n/a" if e is None else f"{100 * e:+8.1f}%"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("reports", nargs="*", help="JSON files written by bench/cost_check.py on a GPU")
    ap.add_argument("--no-shipped", action="store_true", help="leave calibration.yaml's own rows out of the fit")
    ap.add_argument("--prior", type=float, default=None,
                    help="pull of each constant towards its current value (default: pd.cost.fit.PRIOR)")
    ap.add_argument("--write", action="store_true", help="write the fitted constants into calibration.yaml")
    ap.add_argument("--json", help="also write the old and new constants and every row's errors here")
    args = ap.parse_args(argv)

    from pd.cost.calibration import CALIBRATION_PATH
    from pd.cost.fit import PRIOR, Measured, current, refit, report_rows, row_errors, write_constants
    from pd.cost.rows import calibration_rows
    from pd.errors import ConfigError
    from pd.io import read_json, write_json

    try:
        rows = [] if args.no_shipped else [Measured(s, r) for s, r in calibration_rows()]
        for path in args.reports:
            rows += report_rows(read_json(path), path)
        if not rows:
            raise ConfigError("no rows to fit: give a cost_check JSON or leave out --no-shipped")
        old = current()
        new = refit(rows, prior=PRIOR if args.prior is None else args.prior)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    before, after = row_errors(rows, old), row_errors(rows, new)
    shipped = 0 if args.no_shipped else len(calibration_rows())
    print(f"{len(rows)} rows: {shipped} from {CALIBRATION_PATH.name}, {len(rows) - shipped} from "
          f"{', '.join(args.reports) or 'no JSON'}")
    print(f"\n{'constant':34} {'old':>11} {'new':>11} {'change':>9}")
    for section, names in new.items():
        for name, value in names.items():
            was = old[section][name]
            print(f"{section + '.' + name:34} {was:11.4g} {value:11.4g} {_pct(value / was - 1)}")
    print(f"\n{'row':58} {'field':8} {'measured':>9} {'before':>9} {'after':>9}")
    for m, b, a in zip(rows, before, after):
        for f, e in b["error"].items():
            if e is None and a["error"][f] is None:
                continue
            print(f"{(m.section + ': ' + str(m.row.get('source', '')))[:58]:58} {f:8} {m.row[f]:9.4g} "
                  f"{_pct(e)} {_pct(a['error'][f])}")
    worst = {}
    for label, errs in (("before", before), ("after", after)):
        vals = [abs(e) for r in errs for e in r["error"].values() if e is not None]
        worst[label] = max(vals)
        print(f"largest error {label}: {100 * worst[label]:.1f}% "
              f"({'within' if worst[label] <= TOLERANCE else 'OUTSIDE'} +-{100 * TOLERANCE:.0f}%)")
    if args.json:
        write_json(args.json, {"old": old, "new": new, "largest_error": worst,
                               "rows": [{"section": m.section, "source": m.row.get("source", ""),
                                         "before": b["error"], "after": a["error"]}
                                        for m, b, a in zip(rows, before, after)]})
    if args.write:
        changed = write_constants(new)
        print(f"\nwrote {CALIBRATION_PATH}: " + ("; ".join(changed) if changed else "no number changed"))
    else:
        print("\n(--write puts the new constants into calibration.yaml)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
