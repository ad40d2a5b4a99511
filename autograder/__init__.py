"""The course's grading: nbgrader configuration, release, and the sandboxed batch grader."""
