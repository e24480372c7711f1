# shellcheck shell=bash
# Shared by build-release.sh and smoke-release.sh (sourced, not run): the list of supported
# release targets and installing the Debian/rustup pieces they need, so a fresh Debian machine
# (CI or a developer's) can run either script without a setup step of its own.

# The targets built when no target is named. Both are fully static (musl, crt-static).
DEFAULT_RELEASE_TARGETS=(x86_64-unknown-linux-musl aarch64-unknown-linux-musl)

# Debian packages a target needs to be *built*: the C compiler for ring and the linker.
build_packages_for() {
  case "$1" in
    x86_64-unknown-linux-musl) echo "musl-tools" ;;
    aarch64-unknown-linux-musl) echo "gcc-aarch64-linux-gnu libc6-dev-arm64-cross" ;;
    *)
      echo "release: unsupported target '$1' (supported: ${DEFAULT_RELEASE_TARGETS[*]}; see docs/release.md for 32-bit ARM)" >&2
      return 1
      ;;
  esac
}

# The command prefix that runs a binary of this target on this host ("" = run it directly).
runner_for() {
  local arch="${1%%-*}"
  if [ "$arch" = "$(uname -m)" ]; then
    echo ""
  else
    echo "qemu-$arch"
  fi
}

# Installs the given Debian packages that are not installed yet. `apt-get update` runs only when
# something is missing, so a machine that has everything never touches the network.
ensure_packages() {
  local missing=()
  local p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  local sudo=()
  if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
      sudo=(sudo)
    else
      echo "release: need root (or sudo) to install: ${missing[*]}" >&2
      return 1
    fi
  fi
  echo "release: installing ${missing[*]}"
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# Adds the Rust standard library for each target that rustup does not have yet.
ensure_rust_targets() {
  local installed t
  installed="$(rustup target list --installed)"
  for t in "$@"; do
    if ! grep -qx "$t" <<<"$installed"; then
      echo "release: rustup target add $t"
      rustup target add "$t"
    fi
  done
}

# Where cargo puts the release binary of a target (honours CARGO_TARGET_DIR like cargo does).
binary_path_for() {
  echo "${CARGO_TARGET_DIR:-target}/$1/release/ninjarec"
}
