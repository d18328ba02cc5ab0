#!/usr/bin/env bash
# README's test command: install what the tests need, lint, run every test. Nothing may skip
# (tests/no_skips.py turns a skip into a failure), so green here means every test ran.
#
#   bash scripts/test.sh                 # the whole suite
#   bash scripts/test.sh tests/flows -x  # extra arguments go to pytest
#   CROWDLOOP_TEST_WORKERS=0 bash scripts/test.sh   # in one process (default: 2 processes)
#
# It installs, only when missing: the Debian packages the tests use (as root, through apt), the
# project with its test extra into .venv, and the Label Studio server into its own venv
# ($CROWDLOOP_LS_VENV, default .ls-venv; its pins conflict with Prefect's), in the background
# while the project installs. Then ruff, then pytest; the exit status is non-zero when either fails.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}

# -- Debian packages ----------------------------------------------------------------------------
# chromium: the annotation app's browser tests (Playwright drives /usr/bin/chromium; it never
# downloads a browser). dataset-fashion-mnist: the image-pool and deep-model tests (idx files under
# /usr/share/datasets/fashion-mnist/; nothing is downloaded at run time). fortunes, fortunes-min:
# a real text corpus for text pools.
apt_packages=(chromium dataset-fashion-mnist fortunes fortunes-min)
apt_missing=()
for pkg in "${apt_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || apt_missing+=("$pkg")
done
if [ ${#apt_missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "test.sh: installing Debian packages: ${apt_missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${apt_missing[@]}" >/dev/null
  else
    echo "test.sh: missing Debian packages; their tests will fail until you run:" >&2
    echo "  sudo apt-get update && sudo apt-get install -y ${apt_missing[*]}" >&2
  fi
fi

# -- the Label Studio server's venv, in the background ------------------------------------------
# The version is the one tests/vendors/label_studio_server.py starts.
ls_version=$(sed -n 's/^LS_VERSION = "\([^"]*\)".*/\1/p' tests/vendors/label_studio_server.py)
export CROWDLOOP_LS_VENV=${CROWDLOOP_LS_VENV:-$PWD/.ls-venv}
# Installed against tests/vendors/label_studio_constraints.txt (the versions that last passed: a
# new release of one of its loosely pinned dependencies once made the server exit at start). The
# venv records the constraints' checksum; a venv made from other constraints is brought in line.
ls_constraints=tests/vendors/label_studio_constraints.txt
ls_stamp=$(sha256sum "$ls_constraints" | cut -d' ' -f1)
ls_pid=
if [ "$("$CROWDLOOP_LS_VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("label-studio"))' \
        2>/dev/null)" != "$ls_version" ] \
   || [ "$(cat "$CROWDLOOP_LS_VENV/.crowdloop-constraints" 2>/dev/null)" != "$ls_stamp" ]; then
  echo "test.sh: installing label-studio==$ls_version into $CROWDLOOP_LS_VENV (log: .ls-install.log)"
  ( { [ -x "$CROWDLOOP_LS_VENV/bin/pip" ] || "$PYTHON" -m venv "$CROWDLOOP_LS_VENV"; } \
    && "$CROWDLOOP_LS_VENV/bin/pip" install -q -c "$ls_constraints" "label-studio==$ls_version" \
    && echo "$ls_stamp" > "$CROWDLOOP_LS_VENV/.crowdloop-constraints" ) > .ls-install.log 2>&1 &
  ls_pid=$!
fi

# -- the project and its test extra -------------------------------------------------------------
# An existing .venv is reused (also a thin one layered over another venv's site-packages): pip
# installs only what is missing or differs from tests/constraints.txt (the versions that last
# passed, so a dependency's new release cannot turn the suite red between two commits).
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/pip install -q -c tests/constraints.txt -e '.[test]'

if [ -n "$ls_pid" ] && ! wait "$ls_pid"; then
  echo "test.sh: the Label Studio venv failed to install (tail of .ls-install.log below); its test will fail" >&2
  tail -n 20 .ls-install.log >&2
fi

# -- lint, then every test ----------------------------------------------------------------------
status=0
echo "test.sh: ruff check"
.venv/bin/ruff check . || { status=1; echo "test.sh: ruff found problems (above); running the tests anyway" >&2; }
# The test files run on $CROWDLOOP_TEST_WORKERS processes (default 2; 0 runs them in this one),
# each file whole on one process (--dist loadfile: a file's module fixtures, e.g. a Label Studio
# server, start once). Each process starts its own Prefect and S3 test servers on free ports. Most
# of a test's time is spent waiting for servers, browsers and subprocesses, so two processes on
# two cores took the suite from 46 to 19 minutes. Files go out in collection order, the slow
# folders first (tests/conftest.py, SLOW_FIRST), not xdist's default of the most tests first.
workers=${CROWDLOOP_TEST_WORKERS:-2}
.venv/bin/python -m pytest -q -n "$workers" --dist loadfile --no-loadscope-reorder "$@" || status=$?
[ "$status" = 0 ] || echo "test.sh: failed (exit $status)" >&2
exit "$status"
