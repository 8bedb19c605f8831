# The image the Helm chart runs (charts/idplane, values image.repository and
# image.tag):  docker build -t idplane:0.1.0 .
# The toolchain the tests run with (rust-version in Cargo.toml is the floor).
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin idplane

FROM debian:bookworm-slim
# CA certificates for SMTP TLS and telephony hooks over HTTPS.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/idplane /usr/local/bin/idplane
# Not root; the chart's fsGroup makes the state volume writable for it.
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/idplane"]
