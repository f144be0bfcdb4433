#!/bin/sh
# Debian's python3 (with PyYAML); the one first on PATH may be another.
exec /usr/bin/python3 "${TEST_SRCDIR}/wavekv/deploy/deploy_test.py"
