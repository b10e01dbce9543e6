#!/usr/bin/env bash
# image.sh - build the repository's Dockerfile with a real image builder, here: BuildKit
# (buildkitd + buildctl from the Go module proxy), daemonless (buildkitd runs only for the
# build), with an OCI worker (Debian's runc) in the host's network namespace.
#
#   scripts/image.sh install
#       Idempotent, as root: Debian's runc, skopeo, docker-registry and mmdebstrap; buildkitd
#       and buildctl (scripts/install-tools.sh buildkit); the two local base images (below).
#       Everything is cached under ${XDG_CACHE_HOME:-$HOME/.cache}/pullsecret-injector/
#       (bin/buildkit-vX, images/bases/KEY, buildkit/ = BuildKit's state and layer cache).
#   scripts/image.sh build OUT.tar [NAME]
#       Builds ./Dockerfile into the OCI archive OUT.tar (image name NAME, default
#       pullsecret-injector:dev) and prints its manifest digest on stdout. The build context is
#       what .dockerignore lets through; the log goes to stderr (and OUT.tar.log).
#   scripts/image.sh inspect OUT.tar
#       Prints the image's config and every file of its root filesystem (layers applied, with
#       owner and mode) as JSON (tests/e2e_install.rs checks what the chart relies on).
#
# Base images. The Dockerfile's FROM lines are build arguments whose defaults are the public
# images (rust:1-bookworm, gcr.io/distroless/cc-debian12:nonroot). Neither Docker Hub nor gcr.io
# is reachable here (only the package registries are), so the build substitutes equivalents
# made on this machine, served to BuildKit by a docker-registry on 127.0.0.1 (plain HTTP, no
# auth, up only during the build):
#   builder  Debian bookworm from deb.debian.org (mmdebstrap --variant=minbase with gcc,
#            libc6-dev, ca-certificates) plus this machine's installed Rust toolchain
#            (`rustc --print sysroot`, without its docs) at /usr/local/rust, CARGO_HOME
#            /usr/local/cargo, and this machine's CA bundle (so that cargo reaches crates.io
#            as it does here). No rustup download: only the host's target, x86_64 glibc.
#   runtime  libc6, libgcc-s1 and ca-certificates from Debian bookworm (`apt-get download`,
#            extracted), /etc/ssl/certs/ca-certificates.crt, /etc/passwd and /etc/group with
#            nonroot (65532), /home/nonroot, /tmp; USER 65532 (like distroless/cc:nonroot).
# The build's RUN steps reach crates.io (cargo) and nothing else; the base registry is on
# loopback.
#
# Knobs: PSI_IMAGE_TIMEOUT (seconds for one build, default 3600), PSI_BUILDKIT_KEEP_MB (BuildKit's
# layer cache budget, default 3000: pruned to it after each build).
# Progress and errors go to stderr, prefixed "image:".
set -euo pipefail
LIB_NAME=image
# shellcheck source=scripts/lib.sh
source "$(dirname "$0")/lib.sh"

PACKAGES=(runc skopeo docker-registry mmdebstrap python3 curl)
BK_STATE=$CACHE_DIR/buildkit
# BuildKit's layer cache budget (MB): GC threshold and the prune after each build.
BK_KEEP_MB=${PSI_BUILDKIT_KEEP_MB:-3000}
BASES_DIR=$IMAGE_DIR/bases
DEBIAN_MIRROR=http://deb.debian.org/debian
SUITE=bookworm
BUILD_TIMEOUT=${PSI_IMAGE_TIMEOUT:-3600}

RUN_DIR=
on_exit() {
    local rc=$?
    if [[ -n $RUN_DIR ]]; then
        stop_one "$RUN_DIR" buildkitd || true
        stop_one "$RUN_DIR" docker-registry || true
        # buildkitd leaves its executor mounts only when killed; unmount what is left.
        findmnt -rn -o TARGET 2>/dev/null | awk -v p="$BK_STATE/" 'index($0, p) == 1' | sort -r |
            while read -r m; do umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true; done
        rm -rf --one-file-system "$RUN_DIR"
    fi
    exit "$rc"
}
trap on_exit EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

buildkit_dir() { "$SCRIPTS/install-tools.sh" buildkit; }

# ---------------------------------------------------------------------------------------------
# base images

# The recipe of both base images; its digest is part of their cache key (base_key).
make_builder_base() { # DIR
    local root=$1/rootfs tc=$1/toolchain sysroot
    sysroot=$(rustc --print sysroot) || die "rustc not found: install Rust (stable) with rustup"
    [[ -x $sysroot/bin/cargo && -x $sysroot/bin/rustc ]] || die "no cargo and rustc in $sysroot"
    say "builder base: Debian $SUITE (mmdebstrap, minbase + gcc, libc6-dev, ca-certificates) from $DEBIAN_MIRROR"
    run_logged "mmdebstrap $SUITE" "$LOG_DIR/mmdebstrap.log" \
        mmdebstrap --variant=minbase --include=gcc,libc6-dev,ca-certificates \
        --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
        --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-exclude=/usr/share/info/*' \
        "$SUITE" "$root" "$DEBIAN_MIRROR" || die "mmdebstrap failed (log: $LOG_DIR/mmdebstrap.log)"
    # Device nodes are made by the runtime, not shipped in layers; apt lists are not needed.
    find "$root/dev" -mindepth 1 -delete
    # The build's cargo reaches crates.io the way this machine does: with this machine's trust
    # roots (they may include the CA of a TLS-inspecting proxy on the way out).
    cp "$(host_ca_bundle)" "$root/etc/ssl/certs/ca-certificates.crt"
    rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/* "$root"/var/log/*
    say "builder base: Rust toolchain $(rustc --version | cut -d' ' -f2) from $sysroot (without share/)"
    mkdir -p "$tc/usr/local/rust" "$tc/usr/local/cargo"
    for d in bin lib libexec etc; do
        if [[ -d $sysroot/$d ]]; then cp -a "$sysroot/$d" "$tc/usr/local/rust/"; fi
    done
    python3 "$SCRIPTS/oci-image.py" --rootfs "$1/oci" 1-bookworm \
        '{"Env": ["PATH=/usr/local/cargo/bin:/usr/local/rust/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "CARGO_HOME=/usr/local/cargo"], "Cmd": ["bash"], "WorkingDir": "/"}' \
        "$root" "$tc" >/dev/null || die "assembling the builder base image failed"
    rm -rf --one-file-system "$root" "$tc"
}

make_runtime_base() { # DIR
    local root=$1/rootfs debs=$1/debs p f
    say "runtime base: libc6, libgcc-s1, gcc-12-base, ca-certificates from Debian $SUITE (apt-get download)"
    mkdir -p "$root" "$debs"
    (cd "$debs" && apt-get download -q libc6 libgcc-s1 gcc-12-base ca-certificates >"$LOG_DIR/apt-download.log" 2>&1) || {
        apt-get update -q >>"$LOG_DIR/apt-download.log" 2>&1 || true
        (cd "$debs" && apt-get download -q libc6 libgcc-s1 gcc-12-base ca-certificates >>"$LOG_DIR/apt-download.log" 2>&1) ||
            { tail -n 20 "$LOG_DIR/apt-download.log" >&2; die "apt-get download failed"; }
    }
    for f in "$debs"/*.deb; do dpkg-deb -x "$f" "$root"; done
    # What distroless leaves out: documentation, the CA update script (no shell to run it).
    rm -rf "$root"/usr/share/{doc,man,lintian,locale,info} "$root"/usr/sbin "$root"/etc/ca-certificates
    mkdir -p "$root/etc/ssl/certs" "$root/tmp" "$root/home/nonroot" "$root/root"
    # update-ca-certificates' bundle: every certificate the package ships (all are enabled by
    # default), sorted.
    find "$root/usr/share/ca-certificates" -name '*.crt' | LC_ALL=C sort | while read -r p; do cat "$p"; done \
        >"$root/etc/ssl/certs/ca-certificates.crt"
    [[ $(grep -c 'BEGIN CERTIFICATE' "$root/etc/ssl/certs/ca-certificates.crt") -gt 100 ]] ||
        die "the CA bundle from ca-certificates holds too few certificates"
    printf 'root:x:0:0:root:/root:/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' >"$root/etc/passwd"
    printf 'root:x:0:\nnobody:x:65534:\nnonroot:x:65532:\n' >"$root/etc/group"
    printf 'passwd: files\ngroup: files\nhosts: files dns\n' >"$root/etc/nsswitch.conf"
    chmod 1777 "$root/tmp"
    chmod 700 "$root/home/nonroot" "$root/root"
    chown 65532:65532 "$root/home/nonroot"
    chown -R 0:0 "$root/etc" "$root/usr"
    python3 "$SCRIPTS/oci-image.py" --rootfs "$1/oci" debian12-nonroot \
        '{"User": "65532", "WorkingDir": "/home/nonroot", "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt"]}' \
        "$root" >/dev/null || die "assembling the runtime base image failed"
    rm -rf --one-file-system "$root" "$debs"
}

host_ca_bundle() {
    local f=${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}
    [[ -s $f ]] || die "no CA bundle at $f (install ca-certificates)"
    echo "$f"
}

# base_key: what the base images depend on: their recipe, the image assembler, the toolchain,
# the machine's trust roots.
base_key() {
    { declare -f make_builder_base make_runtime_base; sha256sum <"$SCRIPTS/oci-image.py"; rustc -vV; echo "$SUITE"
        sha256sum <"$(host_ca_bundle)"; } |
        sha256sum | cut -c1-16
}

# ensure_bases: BASES (the folder holding builder/oci and runtime/oci), built when missing.
ensure_bases() {
    local key dir tmp t0=$SECONDS
    key=$(base_key)
    dir=$BASES_DIR/$key
    BASES=$dir
    BASE_KEY=$key
    if [[ -f $dir/.done ]]; then
        say "base images: cached in $dir"
        return 0
    fi
    mkdir -p "$BASES_DIR"
    tmp=$(mktemp -d "$BASES_DIR/.build.XXXXXX")
    mkdir -p "$tmp/builder" "$tmp/runtime"
    make_runtime_base "$tmp/runtime"
    make_builder_base "$tmp/builder"
    touch "$tmp/.done"
    rm -rf --one-file-system "$dir"
    mv "$tmp" "$dir"
    # Base images of an earlier key (another toolchain, recipe or trust roots) are never used
    # again.
    find "$BASES_DIR" -mindepth 1 -maxdepth 1 -type d ! -name "$key" ! -name '.build.*' \
        -exec rm -rf --one-file-system {} +
    say "base images built in $((SECONDS - t0))s: $dir ($(du -sh "$dir" | cut -f1))"
}

cmd_install() {
    local t0=$SECONDS lockfd
    [[ $(id -u) == 0 ]] || die "buildkitd (rootful, OCI worker) needs root"
    mkdir -p "$CACHE_DIR" "$LOG_DIR"
    apt_install apt-image "${PACKAGES[@]}"
    buildkit_dir >/dev/null
    exec {lockfd}>>"$CACHE_DIR/image-bases.lock"
    flock -w 3600 "$lockfd" || die "timed out waiting for $CACHE_DIR/image-bases.lock"
    ensure_bases
    say "install done in $((SECONDS - t0))s"
}

# ---------------------------------------------------------------------------------------------
# build

registry_up() { [[ $(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "http://$1/v2/") == 200 ]]; }

cmd_build() {
    [[ -n ${1:-} ]] || die "usage: scripts/image.sh build OUT.tar [NAME]"
    local out=$1 name=${2:-pullsecret-injector:dev} bk port lockfd t0=$SECONDS reg builder runtime digest rc=0
    [[ $(id -u) == 0 ]] || die "buildkitd (rootful, OCI worker) needs root"
    need runc "Debian package runc: scripts/image.sh install"
    need skopeo "scripts/image.sh install"
    need docker-registry "scripts/image.sh install"
    need mmdebstrap "scripts/image.sh install"
    out=$(realpath -m "$out")
    bk=$(buildkit_dir)
    mkdir -p "$BK_STATE" "$(dirname "$out")"
    # One build at a time on this machine: buildkitd owns its state folder.
    exec {lockfd}>>"$CACHE_DIR/image-bases.lock"
    flock -w 3600 "$lockfd" || die "timed out waiting for $CACHE_DIR/image-bases.lock"
    ensure_bases
    RUN_DIR=$(mktemp -d /tmp/psi-image.XXXXXX)

    # The base images, from a registry on loopback (plain HTTP, no auth; its storage is kept
    # in the cache, so pushing an unchanged base image moves no data).
    read -r port <<<"$(free_ports 1)"
    reg=127.0.0.1:$port
    mkdir -p "$BK_STATE/registry"
    cat >"$RUN_DIR/registry.yml" <<EOF
version: 0.1
log: {level: warn}
storage:
  filesystem: {rootdirectory: $BK_STATE/registry}
  maintenance: {uploadpurging: {enabled: false}}
http:
  addr: $reg
  secret: $(openssl rand -hex 16)
EOF
    LAUNCH_CLOSE_FD=$lockfd launch docker-registry "$RUN_DIR" docker-registry serve "$RUN_DIR/registry.yml"
    wait_until "the base image registry on $reg" docker-registry "$RUN_DIR" 20 registry_up "$reg" ||
        die "the base image registry did not start"
    builder=$reg/psi-local/rust:1-bookworm-$BASE_KEY
    runtime=$reg/psi-local/distroless-cc:debian12-nonroot-$BASE_KEY
    skopeo copy -q --dest-tls-verify=false "oci:$BASES/builder/oci:1-bookworm" "docker://$builder" >&2 ||
        die "pushing the builder base image to $reg failed"
    skopeo copy -q --dest-tls-verify=false "oci:$BASES/runtime/oci:debian12-nonroot" "docker://$runtime" >&2 ||
        die "pushing the runtime base image to $reg failed"

    cat >"$RUN_DIR/buildkitd.toml" <<EOF
# written by scripts/image.sh
root = "$BK_STATE/root"
[grpc]
  address = ["unix://$RUN_DIR/buildkitd.sock"]
[worker.oci]
  enabled = true
  binary = "runc"
  snapshotter = "overlayfs"
  # RUN steps share the host's network: cargo reaches crates.io, nothing else is asked for.
  networkMode = "host"
  gc = true
  # Layer cache kept between builds (the dependency layer is the slow one): the builder base
  # (~0.9 GB) and the dependency layer (~0.9 GB) of the last build fit; older ones go.
  gckeepstorage = "${BK_KEEP_MB}MB"
[worker.containerd]
  enabled = false
[registry."$reg"]
  http = true
EOF
    say "starting buildkitd $("$bk/buildkitd" --version | cut -d' ' -f3) (state $BK_STATE/root)"
    : >"$RUN_DIR/buildkitd.log"
    LAUNCH_CLOSE_FD=$lockfd launch buildkitd "$RUN_DIR" "$bk/buildkitd" --config "$RUN_DIR/buildkitd.toml"
    wait_until "buildkitd's socket" buildkitd "$RUN_DIR" 60 \
        "$bk/buildctl" --addr "unix://$RUN_DIR/buildkitd.sock" debug workers || die "buildkitd did not start"

    say "building $REPO/Dockerfile -> $out ($name; BUILDER_IMAGE=$builder, RUNTIME_IMAGE=$runtime)"
    timeout "$BUILD_TIMEOUT" "$bk/buildctl" --addr "unix://$RUN_DIR/buildkitd.sock" build \
        --progress plain --frontend dockerfile.v0 \
        --local context="$REPO" --local dockerfile="$REPO" \
        --opt "build-arg:BUILDER_IMAGE=$builder" --opt "build-arg:RUNTIME_IMAGE=$runtime" \
        --output "type=oci,dest=$out.tmp,name=$name" 2> >(tee "$out.log" >&2) || rc=$?
    if ((rc != 0)); then
        say "buildctl build failed (exit $rc); buildkitd's log:"
        tail -n 20 "$RUN_DIR/buildkitd.log" | sed 's/^/    /' >&2
        die "the image build failed (log: $out.log)"
    fi
    mv -f "$out.tmp" "$out"
    chmod 644 "$out"
    # BuildKit collects garbage in the background; prune now, least recently used first, so
    # that the state folder stays within the GC budget when the next step needs the disk.
    "$bk/buildctl" --addr "unix://$RUN_DIR/buildkitd.sock" prune --keep-storage "$BK_KEEP_MB" >/dev/null 2>&1 ||
        say "WARNING: buildctl prune failed; BuildKit's state may exceed ${BK_KEEP_MB} MB ($BK_STATE/root)"
    say "BuildKit state: $(du -sh "$BK_STATE/root" 2>/dev/null | cut -f1) (kept below ${BK_KEEP_MB} MB)"
    digest=$(python3 "$SCRIPTS/oci-image.py" --inspect "$out" | python3 -c 'import json,sys; print(json.load(sys.stdin)["manifestDigest"])') ||
        die "the built archive $out cannot be read"
    say "built $name ($digest) in $((SECONDS - t0))s: $out"
    echo "$digest"
}

cmd_inspect() {
    [[ -f ${1:-} ]] || die "usage: scripts/image.sh inspect OUT.tar"
    python3 "$SCRIPTS/oci-image.py" --inspect "$1"
}

usage() {
    sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2
    exit 2
}

case ${1:-} in
install) shift && cmd_install "$@" ;;
build) shift && cmd_build "$@" ;;
inspect) shift && cmd_inspect "$@" ;;
-h | --help | help) usage ;;
*) usage ;;
esac
