#!/bin/sh
# Stage 1: fetch the student's submission into /job and check that it parses.
set -e
src="/submissions/$STUDENT_ID/add.sh"
if [ ! -f "$src" ]; then
    echo "no submission found for $STUDENT_ID" >&2
    exit 1
fi
mkdir -p /job/build
cp "$src" /job/build/add.sh
if ! sh -n /job/build/add.sh; then
    echo "add.sh does not parse: build failed" >&2
    exit 1
fi
echo "built $ASSIGNMENT for $STUDENT_ID"
