"""Broadway's grader daemon: registers with the API, pulls jobs, runs their stages in Docker."""
