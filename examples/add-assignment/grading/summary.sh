#!/bin/sh
# Post-processing: read every student's job and result and summarize the run.
# /job/roster.json is the students list as submitted (what 2018-era images read);
# /job/student_results.json adds each student's job id, status and result.
roster=/job/student_results.json
students=$(grep -c '"job_id"' "$roster")
succeeded=$(grep -c '"status": "succeeded"' "$roster")
failed=$(grep -c '"status": "failed"' "$roster")
echo "students: $students, graded: $succeeded, failed to grade: $failed"
grep -o 'score: [0-9]*/[0-9]*' "$roster" | sort | uniq -c | while read -r n score; do
    echo "  $n student(s) with $score"
done
echo "summary: $succeeded/$students graded"
