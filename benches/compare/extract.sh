#!/usr/bin/env bash
# Extraction synthesis on generated order e-mails: learn from one set of phrasings, print
# the per-field exact match on held-out e-mails written with another set (order numbers,
# amounts with currencies, dates in several formats, e-mail addresses, tracking codes).
#
#   benches/compare/extract.sh [--train N] [--test N] [--seed S] [--show-errors N]
#
# Defaults: 300 training e-mails, 1000 held-out, seed 1. Builds the example in release.
set -euo pipefail
. "$(dirname "$0")/../../scripts/lib.sh"
cargo build --release -q -p loopai-synth --example extract_eval
"$target_dir/release/examples/extract_eval" "$@"
