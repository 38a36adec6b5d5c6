#!/usr/bin/env bash
# Print the README's set-up commands, one per line, in the order they appear: the
# indented command lines of its "## Set up" section. tests/test_readme.py checks that
# .ci/run runs exactly these lines, so the README and CI cannot drift apart.
set -euo pipefail
awk '
  /^## /        { in_setup = ($0 == "## Set up"); next }
  in_setup && /^    [^ ]/ { sub(/^    /, ""); print }
' "$(dirname "$0")/../README.md"
