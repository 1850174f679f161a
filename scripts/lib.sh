# Sourced by the repository's scripts first thing, before anything changes directory:
#
#   . "$(dirname "$0")/lib.sh"      (from scripts/; ../../scripts/lib.sh from benches/compare/)
#
# Cargo reads a relative CARGO_TARGET_DIR relative to the directory it runs in, and the
# scripts run from the repository root: a relative CARGO_TARGET_DIR is therefore made absolute
# against the directory the script was invoked from (and exported, so that scripts started
# from here agree). Then it moves to the repository root and sets `target_dir` to cargo's
# real target directory (CARGO_TARGET_DIR, build.target-dir of a .cargo/config.toml, or
# target/), as an absolute path: binaries are "$target_dir/release/loopai" and the like,
# never target/... .
case ${CARGO_TARGET_DIR:-} in
  "" | /*) ;;
  *) CARGO_TARGET_DIR=$PWD/$CARGO_TARGET_DIR; export CARGO_TARGET_DIR ;;
esac
cd "$(dirname "${BASH_SOURCE[0]}")/.."
target_dir=$(cargo metadata --format-version 1 --no-deps --offline |
  sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
if [ -z "$target_dir" ]; then
  echo "$0: cannot find cargo's target directory (cargo metadata --format-version 1 --no-deps)" >&2
  exit 1
fi
