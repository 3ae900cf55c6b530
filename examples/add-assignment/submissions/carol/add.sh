#!/bin/sh
# multiplies by mistake
echo $(($1 * $2))
