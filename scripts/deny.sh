#!/usr/bin/env bash
# Supply-chain checks with cargo-deny (config: deny.toml): licenses, bans (forbidden and
# duplicate crates), sources (crates.io only), and security advisories (RustSec).
#
#   scripts/deny.sh                 licenses, bans, sources; advisories too when the RustSec
#                                   database can be fetched (or is already on disk), else a
#                                   loud note that they were NOT checked
#   scripts/deny.sh --advisories    the same, but fail when the advisories cannot be checked
#   scripts/deny.sh --offline       licenses, bans, sources only (no network at all)
#
# cargo-deny is installed from crates.io into the project cache
# (${XDG_CACHE_HOME:-$HOME/.cache}/pullsecret-injector/cargo-deny) on first use; later runs
# reuse it. The RustSec database is a git repository on GitHub, which CI cannot reach here:
# run with --advisories where GitHub is reachable (a developer machine, a release job).
set -euo pipefail
cd "$(dirname "$0")/.."

mode=auto
case ${1:-} in
  "") ;;
  --advisories) mode=required ;;
  --offline) mode=skip ;;
  *) sed -n '2,15p' "$0" >&2; exit 2 ;;
esac

say() { printf 'deny.sh: %s\n' "$*" >&2; }

CARGO_DENY_VERSION=0.20.2
root=${XDG_CACHE_HOME:-$HOME/.cache}/pullsecret-injector/cargo-deny
bin=$root/bin/cargo-deny
if ! [[ -x $bin ]] || ! "$bin" --version 2>/dev/null | grep -q " $CARGO_DENY_VERSION\$"; then
  say "installing cargo-deny $CARGO_DENY_VERSION into $root (first run: a few minutes)"
  cargo install cargo-deny --version "$CARGO_DENY_VERSION" --locked --root "$root" --quiet
fi
say "$("$bin" --version)"

# Licenses, bans and sources read every crate's manifest for every target platform, also
# those this machine never compiles (Windows-only crates, say); `cargo build` and `clippy`
# download only the host's. Fetch them all first, or a fresh machine (empty CARGO_HOME) fails
# with "failed to download ... --offline was specified". Seconds when the cache is warm.
say "cargo fetch --locked (every platform's crates, for the license check)"
cargo fetch --locked --quiet || { say "ERROR: cargo fetch --locked failed: crates.io unreachable?"; exit 1; }
"$bin" --offline check --hide-inclusion-graph licenses bans sources

if [[ $mode == skip ]]; then
  say "advisories NOT checked (--offline)"
  exit 0
fi
# Advisories need the RustSec database (a git clone from GitHub, kept under
# $CARGO_HOME/advisory-dbs). Fetch it, bounded in time; use an existing copy if that fails.
if timeout 120 "$bin" fetch db >/dev/null 2>&1; then
  "$bin" --offline check --hide-inclusion-graph advisories
elif ls -d "${CARGO_HOME:-$HOME/.cargo}"/advisory-dbs/*/ >/dev/null 2>&1; then
  say "could not update the RustSec database; checking against the copy on disk"
  "$bin" --offline check --hide-inclusion-graph advisories
elif [[ $mode == required ]]; then
  say "advisories: the RustSec database cannot be fetched (GitHub unreachable) and there is no local copy"
  exit 1
else
  say "advisories NOT checked: the RustSec database cannot be fetched (GitHub unreachable) and there is no local copy; run scripts/deny.sh --advisories where GitHub is reachable"
fi
