# syntax=docker/dockerfile:1
#
# ssogate container image: a static (musl) binary on distroless/static.
#
#   docker build -t ghcr.io/example/ssogate:0.1.0 .
#
# The final image holds the binary only (plus distroless' CA bundle, passwd
# entry for "nonroot" and tzdata), runs as 65532:65532 and writes no files,
# so it works with a read-only root filesystem.
#
# CI cannot build images (no container engine): `.ci/deploy-check` reads this
# file, runs the very `cargo build` line of the builder stage on the host and
# checks that the artifact exists at the path the final stage copies, is
# statically linked, under 25 MB and runs. Keep these lines plain (literal
# target triple, no ARG indirection) so that the check can read them:
#   - the `cargo build …` command in the `builder` stage,
#   - the builder's WORKDIR,
#   - `COPY --from=builder <WORKDIR>/<artifact> /ssogate`.

# ---- builder ---------------------------------------------------------------
FROM rust:1.95-slim-bookworm AS builder

# musl-gcc: ring (via rustls) compiles C and assembly for the musl target.
RUN apt-get update \
 && apt-get install -y --no-install-recommends musl-tools \
 && rm -rf /var/lib/apt/lists/*
RUN rustup target add x86_64-unknown-linux-musl

WORKDIR /src
COPY . .
# The registry cache mount only speeds up rebuilds; the artifact stays in the
# layer (target/ is not a cache mount) so the final stage can copy it.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    cargo build --release --locked --target x86_64-unknown-linux-musl

# ---- final -----------------------------------------------------------------
FROM gcr.io/distroless/static-debian12:nonroot

LABEL org.opencontainers.image.title="ssogate" \
      org.opencontainers.image.description="OpenID Connect authentication gate in front of an on-prem collaboration server" \
      org.opencontainers.image.licenses="Apache-2.0"

COPY --from=builder /src/target/x86_64-unknown-linux-musl/release/ssogate /ssogate

# The gate reads an optional `.env` from its working directory: `/` holds
# none, and nothing is ever written there.
WORKDIR /
USER 65532:65532
EXPOSE 8443
ENTRYPOINT ["/ssogate"]
