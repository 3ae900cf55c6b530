#!/bin/sh
# Stage 2: run the tests against what stage 1 built, write the score to /job/score.
passed=0
total=0
while read -r a b expected; do
    total=$((total + 1))
    got=$(sh /job/build/add.sh "$a" "$b" 2>&1)
    if [ "$got" = "$expected" ]; then
        passed=$((passed + 1))
        echo "ok    add $a $b = $expected"
    else
        echo "FAIL  add $a $b: expected $expected, got '$got'"
    fi
done <<TESTS
2 2 4
1 2 3
10 5 15
TESTS
echo "$passed/$total" > /job/score
echo "score: $passed/$total"
