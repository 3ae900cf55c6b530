"""Course staff tools: start_run (submit, start and watch a grading run) and the demo."""
