#!/usr/bin/env bash
# The project's test command (README "Run the tests"; CI calls it).
# Fetches the pinned offline artefacts first: tests that need them fail loudly when they are absent.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/fetch-assets.sh
cargo test --workspace --locked "$@"
