#!/bin/sh
# Post-processing: read the roster of every student's job and summarize the run.
roster=/job/roster.json
students=$(grep -c '"job_id"' "$roster")
succeeded=$(grep -c '"status": "succeeded"' "$roster")
failed=$(grep -c '"status": "failed"' "$roster")
echo "students: $students, graded: $succeeded, failed to grade: $failed"
grep -o 'score: [0-9]*/[0-9]*' "$roster" | sort | uniq -c | while read -r n score; do
    echo "  $n student(s) with $score"
done
echo "summary: $succeeded/$students graded"
