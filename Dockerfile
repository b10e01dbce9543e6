# pullsecret-injector: a glibc binary on distroless/cc, running as UID/GID 65532.
#
#   docker build -t ghcr.io/pullsecret-injector/pullsecret-injector:0.1.0 .
#
# The Helm chart (charts/pullsecret-injector) relies on: /pullsecret-injector, UID/GID 65532,
# CA certificates in /etc/ssl/certs (https:// endpoints such as Yandex Cloud IAM), ports 8443
# and 8080, and no writable path at all (it runs with readOnlyRootFilesystem).
#
# Why glibc on distroless/cc and not a static musl binary on distroless/static: the musl
# target needs `rustup target add x86_64-unknown-linux-musl`, a download from
# static.rust-lang.org, which this project's tests cannot reach; the tests build THIS file
# with BuildKit (scripts/image.sh) and run the result in a real cluster, so the image users
# build is the one that was tested. Both stages are Debian 12 (bookworm): the binary needs
# glibc >= the builder's and libgcc_s, which distroless/cc-debian12 ships.
#
# The base images are build arguments whose defaults are the public images, so a plain
# `docker build .` uses them. The tests cannot pull from Docker Hub or gcr.io, so
# scripts/image.sh substitutes locally made equivalents, from a local registry on loopback:
#   BUILDER_IMAGE  Debian bookworm (mmdebstrap: gcc, libc6-dev, ca-certificates) plus the
#                  machine's installed stable Rust toolchain (cargo and rustc on PATH,
#                  CARGO_HOME=/usr/local/cargo, as in the rust image);
#   RUNTIME_IMAGE  libc6, libgcc-s1 and ca-certificates from Debian bookworm, /etc/passwd with
#                  nonroot (65532), /tmp, and USER 65532 (as distroless/cc-debian12:nonroot).
ARG BUILDER_IMAGE=docker.io/library/rust:1-bookworm
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot

FROM ${BUILDER_IMAGE} AS builder
WORKDIR /src
# Dependencies first, against stub sources: this layer is rebuilt only when Cargo.toml,
# Cargo.lock or the benchmarks change. Cargo.toml declares [[bench]] targets, and Cargo
# refuses a manifest whose declared targets are missing, so benches/ comes along.
COPY Cargo.toml Cargo.lock ./
COPY benches ./benches
RUN mkdir src \
 && echo 'fn main() {}' > src/main.rs \
 && touch src/lib.rs \
 && cargo build --release --locked --bin pullsecret-injector \
 && rm -rf src
COPY src ./src
# touch: the real sources must look newer than the stub build's outputs.
RUN touch src/main.rs src/lib.rs \
 && cargo build --release --locked --bin pullsecret-injector \
 && cp target/release/pullsecret-injector /pullsecret-injector

# distroless/cc: glibc, libgcc_s and CA certificates (/etc/ssl/certs/ca-certificates.crt);
# no shell, no package manager. The nonroot tag is UID/GID 65532.
FROM ${RUNTIME_IMAGE}
COPY --from=builder /pullsecret-injector /pullsecret-injector
USER 65532:65532
# 8443: HTTPS admission webhook (POST /mutate).
# 8080: plain HTTP admin endpoint (GET /healthz, /readyz, /metrics).
EXPOSE 8443 8080
ENTRYPOINT ["/pullsecret-injector"]
# The chart passes its own args; this default matches its config mount.
CMD ["run", "--config", "/etc/pullsecret-injector/config.yaml"]
