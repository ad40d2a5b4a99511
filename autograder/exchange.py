"""nbgrader's exchange, as this course uses it (selected in ``nbgrader_config.py``)."""

from __future__ import annotations

import glob
import os

from nbgrader.exchange.default.release_feedback import ExchangeReleaseFeedback


class ReleaseFeedback(ExchangeReleaseFeedback):
    """``nbgrader release_feedback`` that skips submissions placed by hand.

    nbgrader files feedback under a hash of the ``submission_secret.txt`` that ``nbgrader
    submit`` wrote, and needs ``timestamp.txt``. A notebook copied into ``autograder/submitted/``
    by hand has neither: nbgrader's own command stops with a ``FileNotFoundError`` at the first
    such student, releasing nothing for the ones after. This skips them with a warning naming
    the feedback file to hand out some other way.
    """

    def copy_files(self) -> None:
        coursedir = self.coursedir
        pattern = coursedir.format_path(coursedir.feedback_directory, "*", coursedir.assignment_id)
        skipped = [s for s in coursedir.student_id_exclude.split(",") if s]
        for folder in sorted(glob.glob(pattern)):
            needed = ("timestamp.txt", "submission_secret.txt")
            if not all(os.path.isfile(os.path.join(folder, name)) for name in needed):
                student = os.path.basename(os.path.dirname(folder))
                skipped.append(student)
                self.log.warning(
                    f"Not releasing feedback for '{student}': the submission did not come through"
                    " the exchange (no timestamp.txt / submission_secret.txt); hand out "
                    f"{folder} yourself"
                )
        coursedir.student_id_exclude = ",".join(skipped)
        super().copy_files()
