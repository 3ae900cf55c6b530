"""Orca (CodeGrade/orca) compatibility: its GradingJobConfig and grading scripts, checked without a store.

`broadway.orca.config.parse_grading_job` checks a PUT /grading_queue body; `broadway.orca.script`
parses the script into the graph the grader walks (grader/orca_runner.py).
"""
