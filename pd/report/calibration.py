"""The judge calibration a judge-graded table shows (pd.evaluation.judge_calibration).

A manifest record graded by the LLM judge names the judge's calibration file and the threshold
(``grading.calibration_threshold``) it is held to (``judge_calibration``, written by
:func:`pd.pipeline.plan.manifest_records`). The table shows one line per calibration, marked
and logged as a warning when the judge falls below the threshold or was not calibrated.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from pd.evaluation.judge_calibration import calibration_line, shortfalls
from pd.io import read_json
from pd.report.aggregate import CellRecord

log = logging.getLogger(__name__)

FLAG = "⚠"  # the marker of a judge below its threshold


@dataclass(frozen=True)
class CalibrationNote:
    """One calibration as the table shows it.

    Attributes:
        line: :func:`pd.evaluation.judge_calibration.calibration_line`, or why there is none.
        flagged: the judge is below its threshold, or its calibration is missing.
        file: the calibration file.
    """

    line: str
    flagged: bool
    file: str


def calibration_notes(records: Iterable[CellRecord], grader: str) -> list[CalibrationNote]:
    """The calibrations of the judge behind a table's grader, once each.

    Args:
        records: the experiment's cell records.
        grader: the table's grader (only a judge's records name a calibration).

    Returns:
        One note per calibration file, in the records' order (empty for substring grades); a
        flagged one is also logged as a warning.
    """
    seen: dict[tuple[str, float], CalibrationNote] = {}
    for r in records:
        cal = r.extra.get("judge_calibration")
        if r.grader != grader or not isinstance(cal, dict) or not cal.get("file"):
            continue
        key = (str(cal["file"]), float(cal["threshold"]))
        if key in seen:
            continue
        path = Path(key[0])
        if path.is_file():
            result = read_json(path)
            note = CalibrationNote(calibration_line(result, key[1]), bool(shortfalls(result, key[1])), key[0])
        else:
            note = CalibrationNote(f"judge calibration: not run ({path.name} missing): {grader}'s grades are "
                                   "unchecked", True, key[0])
        if note.flagged:
            log.warning("%s: %s", grader, note.line)
        seen[key] = note
    return list(seen.values())
