# syntax=docker/dockerfile:1
# pullsecret-injector: a static (musl) binary on distroless/static, running as UID/GID 65532.
#   docker build -t ghcr.io/pullsecret-injector/pullsecret-injector:0.1.0 .
# The Helm chart (charts/pullsecret-injector) relies on: /pullsecret-injector, UID/GID 65532,
# ports 8443 and 8080, no writable root filesystem needed.

FROM rust:1-bookworm AS builder
# ring (rustls' crypto) compiles C and assembly; for the musl target it needs musl-gcc.
RUN apt-get update \
 && apt-get install -y --no-install-recommends musl-tools \
 && rm -rf /var/lib/apt/lists/* \
 && rustup target add x86_64-unknown-linux-musl
WORKDIR /src
# Dependencies first, against stub sources: this layer is rebuilt only when Cargo.toml or
# Cargo.lock change.
COPY Cargo.toml Cargo.lock ./
RUN mkdir src \
 && echo 'fn main() {}' > src/main.rs \
 && touch src/lib.rs \
 && cargo build --release --locked --target x86_64-unknown-linux-musl \
 && rm -rf src
COPY src ./src
# touch: the real sources must look newer than the stub build's outputs.
RUN touch src/main.rs src/lib.rs \
 && cargo build --release --locked --target x86_64-unknown-linux-musl \
 && cp target/x86_64-unknown-linux-musl/release/pullsecret-injector /pullsecret-injector

# distroless/static: no shell, no libc; ships CA certificates (/etc/ssl/certs), which the
# binary uses to reach https:// endpoints (Yandex Cloud IAM). The nonroot tag is UID 65532.
FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=builder /pullsecret-injector /pullsecret-injector
USER 65532:65532
# 8443: HTTPS admission webhook (POST /mutate).
# 8080: plain HTTP admin endpoint (GET /healthz, /readyz, /metrics).
EXPOSE 8443 8080
ENTRYPOINT ["/pullsecret-injector"]
# The chart passes its own args; this default matches its config mount.
CMD ["run", "--config", "/etc/pullsecret-injector/config.yaml"]
