#!/usr/bin/env bash
# Builds libloopai and runs the cross-language tests: the header checks, the C tests under
# AddressSanitizer/UBSan (against libloopai.so and libloopai.a), the Go package tests and
# the C# test program. Every one also asserts the parity vectors in tests/vectors/.
#
# Needs gcc, pkg-config, Go with cgo (Debian: golang-go) and Mono (Debian: mono-mcs,
# mono-runtime). Set LOOPAI_SKIP_GO=1 or LOOPAI_SKIP_CSHARP=1 to skip one deliberately.
# The documentation's commands (docs/c-api.md, bindings/go/README.md) are run verbatim, as the
# blocks marked `<!-- tested: NAME -->` there, against a temporary $HOME.
set -euo pipefail
. "$(dirname "$0")/lib.sh"   # cd to the repository; $target_dir: cargo's target directory
root=$PWD
target=$target_dir
step() { printf '\n== %s\n' "$*"; }

step "build libloopai and the loopai command"
cargo build --locked -p loopai-cli
cargo build --locked -p loopai-ffi
bin=$target/debug
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# doc_block FILE NAME: the fenced block after the line `<!-- tested: NAME -->` of FILE.
doc_block() {
  local text
  text=$(awk -v m="<!-- tested: $2 -->" '
    $0 == m { f = 1; next }
    f == 1 && /^```/ { f = 2; next }
    f == 1 { exit }
    f == 2 && /^```/ { exit }
    f == 2 { print }' "$1")
  if [ -z "$text" ]; then
    echo "$1: no fenced block right after <!-- tested: $2 -->" >&2
    return 1
  fi
  printf '%s\n' "$text"
}
# as_user DIR FILE NAME: runs that block with bash -euo pipefail in DIR, as a user whose
# $HOME is the temporary $home, with the loopai command on the PATH; the toolchains keep
# their own homes and caches. The installer builds the debug library (LOOPAI_PROFILE).
home=$work/home
mkdir -p "$home"
cargo_home=${CARGO_HOME:-$HOME/.cargo}
rustup_home=${RUSTUP_HOME:-$HOME/.rustup}
go_cache=
if command -v go >/dev/null; then go_cache=$(go env GOCACHE); fi
as_user() {
  local script
  script=$(doc_block "$2" "$3")
  echo "\$ # $2, $3 (in ${1/#$work/\$TMP})"
  (cd "$1" && env HOME="$home" CARGO_HOME="$cargo_home" RUSTUP_HOME="$rustup_home" \
     GOCACHE="$go_cache" PATH="$bin:$PATH" LOOPAI_PROFILE=debug bash -euo pipefail -c "$script")
}

step "install into a temporary prefix, as docs/c-api.md says (scripts/install-c-lib.sh)"
as_user "$root" docs/c-api.md c-install
prefix_lib=$home/.local/lib
export PKG_CONFIG_PATH=$prefix_lib/pkgconfig
pkg-config --exists loopai
echo "loopai $(pkg-config --modversion loopai): $(pkg-config --cflags --libs loopai)"
soname=$(readelf -d "$prefix_lib/libloopai.so" | sed -n 's/.*Library soname: \[\(.*\)\]/\1/p')
if [ "$soname" != libloopai.so.0 ]; then
  echo "libloopai.so: SONAME is '$soname', not libloopai.so.0" >&2
  exit 1
fi
echo "SONAME $soname; $(cd "$prefix_lib" && ls -l libloopai.so* | awk '{print $9, $10, $11}' | tr '\n' ' ')"

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

# One data dir per language, each with task "spam" installed four times over: the example
# program (spam/), the parity-vector program (vectors/), the explain-vector program
# (explain/: tests/vectors/explain-program.json), and for the canary-rollout tests
# (rollout/) the example program as v1, active, and again as v2 and v3, not activated.
prepare() {
  local d=$work/data-$1
  "$bin/loopai" artifacts install --data-dir "$d/spam" --task spam \
    --spec examples/spam/spec.json examples/spam/program.json >/dev/null
  "$bin/loopai" artifacts install --data-dir "$d/vectors" --task spam \
    --spec tests/vectors/spec.json tests/vectors/program.json >/dev/null
  "$bin/loopai" artifacts install --data-dir "$d/explain" --task spam \
    tests/vectors/explain-program.json >/dev/null
  "$bin/loopai" artifacts install --data-dir "$d/rollout" --task spam \
    --spec examples/spam/spec.json examples/spam/program.json >/dev/null
  for _ in 2 3; do
    "$bin/loopai" artifacts install --data-dir "$d/rollout" --task spam --no-activate \
      --spec examples/spam/spec.json examples/spam/program.json >/dev/null
  done
  export LOOPAI_TEST_DATA_DIR=$d/spam LOOPAI_VECTORS_DATA_DIR=$d/vectors
  export LOOPAI_EXPLAIN_DATA_DIR=$d/explain
  export LOOPAI_ROLLOUT_DATA_DIR=$d/rollout
}
export LOOPAI_VECTORS=$root/tests/vectors/spam.jsonl
export LOOPAI_EXPLAIN_VECTORS=$root/tests/vectors/explain.jsonl
cflags=(-std=c11 -g -O1 -Wall -Wextra -Werror -fno-omit-frame-pointer
        -fsanitize=address,undefined -fno-sanitize-recover=all)
export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1

step "docs/c-api.md: the example, compiled and run as documented (rpath, LD_LIBRARY_PATH, static)"
as_user "$root" docs/c-api.md c-data >/dev/null
mkdir -p "$work/app"
doc_block docs/c-api.md c-example >"$work/app/app.c"
# The example is also clean under the strict flags of the C tests.
gcc -std=c11 -fsyntax-only -Wall -Wextra -Werror $(pkg-config --cflags loopai) "$work/app/app.c"
for way in c-rpath c-ld-library-path c-static; do
  rm -f "$work/app/app"
  out=$(as_user "$work/app" docs/c-api.md "$way")
  printf '%s\n' "$out"
  if ! printf '%s\n' "$out" | tail -1 | grep -Eq '^"spam" [01]\.[0-9]{2} v1$'; then
    echo "docs/c-api.md $way: the example printed the above, not '\"spam\" <confidence> v1'" >&2
    exit 1
  fi
done
if ldd "$work/app/app" | grep -q libloopai; then
  echo "docs/c-api.md c-static: the program is linked against libloopai.so" >&2
  exit 1
fi

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
    # pkg-config (PKG_CONFIG_PATH above) gives the flags; the rpath finds the library.
    export CGO_ENABLED=1 GOFLAGS=-mod=mod GOPROXY=off
    export CGO_LDFLAGS="-Wl,-rpath,$prefix_lib"
    go vet ./...
    go test -count=1 -race ./...
  )

  step "bindings/go/README.md, verbatim: a new module outside the repository"
  mkdir -p "$home/src" "$work/goapp"
  ln -s "$root" "$home/src/loopai"
  doc_block bindings/go/README.md go-example >"$work/goapp/main.go"
  setup=$(doc_block bindings/go/README.md go-env; doc_block bindings/go/README.md go-replace)
  build=$(doc_block bindings/go/README.md go-build)
  out=$(cd "$work/goapp" && env -u PKG_CONFIG_PATH -u CGO_LDFLAGS HOME="$home" \
    GOCACHE="$go_cache" CGO_ENABLED=1 GOPROXY=off GOFLAGS=-mod=mod \
    bash -euo pipefail -c "go mod init example.com/app 2>/dev/null; $setup
$build")
  printf '%s\n' "$out"
  if ! printf '%s\n' "$out" | tail -1 | grep -Eq '^spam [01]\.[0-9]{2} v1$'; then
    echo "bindings/go/README.md: the example printed the above, not 'spam <confidence> v1'" >&2
    exit 1
  fi
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
