#!/usr/bin/env bash
# Builds libloopai and runs the cross-language tests: the header checks, the C tests under
# AddressSanitizer/UBSan (against libloopai.so and libloopai.a), the Go package tests and
# the C# test program. Every one also asserts the parity vectors in tests/vectors/.
#
# Needs gcc, pkg-config, Go with cgo (Debian: golang-go) and Mono (Debian: mono-mcs,
# mono-runtime). Set LOOPAI_SKIP_GO=1 or LOOPAI_SKIP_CSHARP=1 to skip one deliberately.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
target=${CARGO_TARGET_DIR:-$root/target}
case $target in /*) ;; *) target=$root/$target ;; esac
step() { printf '\n== %s\n' "$*"; }

step "build libloopai and the loopai command"
cargo build --locked -p loopai-cli
cargo build --locked -p loopai-ffi
bin=$target/debug
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

step "install into a staging prefix (scripts/install-c-lib.sh, pkg-config)"
LOOPAI_PROFILE=debug CARGO_TARGET_DIR=$target scripts/install-c-lib.sh "$work/prefix" >/dev/null
export PKG_CONFIG_PATH=$work/prefix/lib/pkgconfig
prefix_lib=$work/prefix/lib
pkg-config --exists loopai
echo "loopai $(pkg-config --modversion loopai): $(pkg-config --cflags --libs loopai)"

step "include/loopai.h compiles on its own (C99, C11, C++)"
gcc -std=c99 -fsyntax-only -Wall -Wextra -Wpedantic -Werror -x c include/loopai.h
gcc -std=c11 -fsyntax-only -Wall -Wextra -Wpedantic -Werror -x c include/loopai.h
if command -v g++ >/dev/null; then
  g++ -std=c++11 -fsyntax-only -Wall -Wextra -Wpedantic -Werror -x c++ include/loopai.h
fi

step "libloopai.so exports exactly the functions of include/loopai.h"
exported=$(nm -D --defined-only "$prefix_lib/libloopai.so" | awk '{print $3}' | sort)
declared=$(grep -oE '\bloopai_[a-z_]+\(' include/loopai.h | tr -d '(' | sort -u)
if [ "$exported" != "$declared" ]; then
  diff <(echo "$declared") <(echo "$exported") >&2 || true
  echo "exported symbols (right) differ from the header's functions (left)" >&2
  exit 1
fi
echo "$(echo "$exported" | wc -l) functions"

# One data dir per language, each with task "spam" installed three times over: the example
# program (spam/), the parity-vector program (vectors/), and for the canary-rollout tests
# (rollout/) the example program as v1, active, and again as v2 and v3, not activated.
prepare() {
  local d=$work/data-$1
  "$bin/loopai" artifacts install --data-dir "$d/spam" --task spam \
    --spec examples/spam/spec.json examples/spam/program.json >/dev/null
  "$bin/loopai" artifacts install --data-dir "$d/vectors" --task spam \
    --spec tests/vectors/spec.json tests/vectors/program.json >/dev/null
  "$bin/loopai" artifacts install --data-dir "$d/rollout" --task spam \
    --spec examples/spam/spec.json examples/spam/program.json >/dev/null
  for _ in 2 3; do
    "$bin/loopai" artifacts install --data-dir "$d/rollout" --task spam --no-activate \
      --spec examples/spam/spec.json examples/spam/program.json >/dev/null
  done
  export LOOPAI_TEST_DATA_DIR=$d/spam LOOPAI_VECTORS_DATA_DIR=$d/vectors
  export LOOPAI_ROLLOUT_DATA_DIR=$d/rollout
}
export LOOPAI_VECTORS=$root/tests/vectors/spam.jsonl
cflags=(-std=c11 -g -O1 -Wall -Wextra -Werror -fno-omit-frame-pointer
        -fsanitize=address,undefined -fno-sanitize-recover=all)
export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1

step "C tests against libloopai.so (ASan + UBSan)"
prepare c-shared
# shellcheck disable=SC2046
gcc "${cflags[@]}" tests/c/test_loopai.c -o "$work/test_c_shared" \
  $(pkg-config --cflags --libs loopai) -lpthread -Wl,-rpath,"$prefix_lib"
"$work/test_c_shared"

step "C tests against libloopai.a (ASan + UBSan)"
prepare c-static
# shellcheck disable=SC2046
gcc "${cflags[@]}" tests/c/test_loopai.c -o "$work/test_c_static" \
  $(pkg-config --cflags loopai) "$prefix_lib/libloopai.a" \
  $(pkg-config --libs-only-l --static loopai | sed 's/-lloopai//')
if ldd "$work/test_c_static" | grep -q libloopai; then
  echo "test_c_static is linked against libloopai.so, not libloopai.a" >&2
  exit 1
fi
"$work/test_c_static"

if [ "${LOOPAI_SKIP_GO:-0}" != 1 ]; then
  step "Go bindings (go test)"
  prepare go
  (
    cd bindings/go
    export CGO_ENABLED=1 GOFLAGS=-mod=mod GOPROXY=off
    export CGO_CFLAGS="-I$root/include" CGO_LDFLAGS="-L$prefix_lib -Wl,-rpath,$prefix_lib"
    go vet ./...
    go test -count=1 -race ./...
  )
fi

if [ "${LOOPAI_SKIP_CSHARP:-0}" != 1 ]; then
  step "C# bindings (mcs + mono)"
  prepare csharp
  mcs -nologo -warnaserror -out:"$work/LoopaiTests.exe" \
    bindings/csharp/Loopai.cs bindings/csharp/tests/LoopaiTests.cs
  LD_LIBRARY_PATH=$prefix_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH} mono --debug "$work/LoopaiTests.exe"
fi

echo
echo "binding tests passed"
