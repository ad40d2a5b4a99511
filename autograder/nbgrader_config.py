"""nbgrader's configuration for this course: run every ``nbgrader`` command from ``autograder/``
(the folder table is in ``autograder/README.md``); any option can be overridden on the
command line, e.g. ``--CourseDirectory.root=/tmp/copy``.
"""

import os
import sys
from pathlib import Path

from nbconvert.preprocessors import CSSHTMLHeaderPreprocessor
from nbgrader.preprocessors import ClearHiddenTests, GetGrades

c = get_config()  # noqa: F821 -- provided by traitlets when it loads this file

COURSE = Path(__file__).resolve().parent.parent

# nbgrader's gradebook runs `alembic` by name, and nbconvert may look for `jupyter`: put the
# bin folder of the interpreter running nbgrader (.venv/bin) first on the PATH, so that
# `../.venv/bin/nbgrader ...` works from a plain shell with no virtual environment activated.
_BIN = str(Path(sys.executable).parent)
if os.environ.get("PATH", "").split(os.pathsep)[0] != _BIN:
    os.environ["PATH"] = _BIN + os.pathsep + os.environ.get("PATH", "")

c.CourseDirectory.course_id = "adam-course"
c.CourseDirectory.root = str(COURSE)
c.CourseDirectory.source_directory = "solutions"
c.CourseDirectory.release_directory = "exercises"
c.CourseDirectory.submitted_directory = "autograder/submitted"
c.CourseDirectory.autograded_directory = "autograder/autograded"
c.CourseDirectory.feedback_directory = "autograder/feedback"
c.CourseDirectory.solution_directory = "autograder/feedback/solution"
c.CourseDirectory.db_url = f"sqlite:///{COURSE / 'autograder' / 'gradebook.db'}"

# nbgrader's exchange (release_assignment, collect, release_feedback) defaults to
# /usr/local/share/nbgrader/exchange. Keep it inside the course, not committed; on a shared
# JupyterHub set it to a folder every student can reach, e.g. --Exchange.root=/srv/exchange.
c.Exchange.root = str(COURSE / "autograder" / "exchange")
# release_feedback skips (with a warning) submissions placed by hand instead of failing.
c.ExchangeFactory.release_feedback = "autograder.exchange.ReleaseFeedback"

# The stub students see in place of each solution.
c.ClearSolutions.code_stub = {"python": "# YOUR CODE HERE\nraise NotImplementedError()"}

# Autograding executes each notebook in a fresh kernel. The longest test cell (AdamW against
# torch over hundreds of steps) takes seconds; the limit leaves room for a slow machine.
c.Execute.timeout = 300
c.Execute.interrupt_on_timeout = True
# Each notebook gets a fresh kernel; stop it at once when the notebook is done.
c.Execute.shutdown_kernel = "immediate"

# Feedback goes to students: strip the hidden tests from the test cells it shows (nbgrader
# 0.9 would otherwise show them, since autograding restores them).
c.GenerateFeedback.preprocessors = [GetGrades, ClearHiddenTests, CSSHTMLHeaderPreprocessor]
