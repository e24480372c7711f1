#!/usr/bin/env bash
# Builds the static release binaries of ninjarec (docs/release.md).
#
#   scripts/build-release.sh [TARGET...]     default: x86_64- and aarch64-unknown-linux-musl
#
# Installs what is missing (rustup targets; Debian: musl-tools, gcc-aarch64-linux-gnu, file),
# checks that no OpenSSL/aws-lc C library is in the dependency tree, builds each target with
# `cargo build --release --locked --target T`, fails unless `file` calls the result statically
# linked, and prints each binary's size and build time. Binaries stay where cargo puts them:
# target/T/release/ninjarec. Run it under `nice -n 19` on a shared machine.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/release-common.sh

if [ $# -gt 0 ]; then targets=("$@"); else targets=("${DEFAULT_RELEASE_TARGETS[@]}"); fi

packages=(file)
for t in "${targets[@]}"; do
  list="$(build_packages_for "$t")" # a plain assignment, so set -e stops on an unknown target
  read -r -a p <<<"$list"
  packages+=("${p[@]}")
done
ensure_packages "${packages[@]}"
ensure_rust_targets "${targets[@]}"

# The binary must need no C library at run time and must not carry OpenSSL or aws-lc at all
# (project rule); ring is the only C code allowed. `--target all` checks every platform's deps.
forbidden="$(cargo tree --locked --target all -e normal,build --prefix none --format '{p}' \
  | grep -E '^(openssl-sys|aws-lc-sys|aws-lc-fips-sys) ' | sort -u || true)"
if [ -n "$forbidden" ]; then
  echo "release: FAIL: forbidden C crypto crate in the dependency tree:" >&2
  echo "$forbidden" >&2
  exit 1
fi
echo "release: dependency tree has no openssl-sys / aws-lc-sys"

summary=()
for t in "${targets[@]}"; do
  if ! rustc --print cfg --target "$t" | grep -qx 'target_feature="crt-static"'; then
    echo "release: FAIL: crt-static is off for $t (RUSTFLAGS?), the binary would not be static" >&2
    exit 1
  fi
  echo "release: building $t"
  start=$(date +%s)
  cargo build --release --locked --target "$t"
  secs=$(( $(date +%s) - start ))
  bin="$(binary_path_for "$t")"
  info="$(file -b "$bin")"
  echo "release: $bin: $info"
  case "$info" in
    *"statically linked"* | *"static-pie linked"*) ;;
    *)
      echo "release: FAIL: $bin is not statically linked" >&2
      exit 1
      ;;
  esac
  size=$(stat -c %s "$bin")
  summary+=("$(printf '%-28s %10d bytes (%5.2f MiB)  built in %4d s  %s' "$t" "$size" \
    "$(awk -v s="$size" 'BEGIN { print s / 1048576 }')" "$secs" "$bin")")
done

echo "release: summary"
printf '  %s\n' "${summary[@]}"
