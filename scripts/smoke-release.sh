#!/usr/bin/env bash
# Smoke-tests the release binaries built by scripts/build-release.sh (docs/release.md).
#
#   scripts/smoke-release.sh [TARGET...]     default: x86_64- and aarch64-unknown-linux-musl
#
# For each target runs `ninjarec --version` (must print "ninjarec <Cargo.toml version>") and,
# if `ninjarec --help` lists the `selftest` subcommand, `ninjarec selftest` (must exit 0).
# A binary for another CPU runs under qemu-user (installed if missing); it is static, so qemu
# needs no sysroot. Exits non-zero if any check fails.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/release-common.sh

if [ $# -gt 0 ]; then targets=("$@"); else targets=("${DEFAULT_RELEASE_TARGETS[@]}"); fi
# How long `selftest` may take; under qemu everything is several times slower.
SELFTEST_TIMEOUT="${SELFTEST_TIMEOUT:-300}"

version="$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n 1)"
for t in "${targets[@]}"; do
  if [ -n "$(runner_for "$t")" ]; then ensure_packages qemu-user; break; fi
done

failed=0
for t in "${targets[@]}"; do
  bin="$(binary_path_for "$t")"
  read -r -a runner <<<"$(runner_for "$t")"
  if [ ! -x "$bin" ]; then
    echo "smoke[$t]: FAIL: $bin missing; run scripts/build-release.sh $t first"
    failed=1
    continue
  fi

  out="$(timeout 60 "${runner[@]}" "$bin" --version 2>&1)" || {
    echo "smoke[$t]: FAIL: --version exited with status $?: $out"
    failed=1
    continue
  }
  if [ "$out" = "ninjarec $version" ]; then
    echo "smoke[$t]: ok: --version printed '$out'${runner:+ (under ${runner[*]})}"
  elif [ -z "$out" ]; then
    echo "smoke[$t]: FAIL: --version printed nothing, expected 'ninjarec $version' (does src/main.rs parse the CLI?)"
    failed=1
    continue
  else
    echo "smoke[$t]: FAIL: --version printed '$out', expected 'ninjarec $version'"
    failed=1
    continue
  fi

  help="$(timeout 60 "${runner[@]}" "$bin" --help 2>&1 || true)"
  if grep -qE '^[[:space:]]+selftest([[:space:]]|$)' <<<"$help"; then
    echo "smoke[$t]: running selftest (timeout ${SELFTEST_TIMEOUT} s)"
    if timeout "$SELFTEST_TIMEOUT" "${runner[@]}" "$bin" selftest; then
      echo "smoke[$t]: ok: selftest passed"
    else
      echo "smoke[$t]: FAIL: selftest exited with status $?"
      failed=1
    fi
  else
    echo "smoke[$t]: SKIPPED selftest: this build's --help lists no 'selftest' subcommand"
  fi
done

if [ "$failed" -ne 0 ]; then
  echo "smoke: FAILED"
  exit 1
fi
echo "smoke: all targets passed"
