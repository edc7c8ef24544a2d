# One image carrying every Homeport binary; the command chooses the service:
#   cira-ingress | mps-command | audit | mqtt-bridge | rps | gateway | homeport (all-in-one) |
#   homeportctl | amt-sim
# Configured only through HOMEPORT_* environment variables and mounted secret files.
# Build: docker build -t homeport .   (or scripts/build-image.sh with buildah, no registry)

ARG RUST_IMAGE=rust:1.95-slim-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

FROM ${RUST_IMAGE} AS build
# gcc, make and perl build the vendored OpenSSL.
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev make perl \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# No debug information in the image's binaries (the release profile keeps it for profiling).
ENV CARGO_PROFILE_RELEASE_DEBUG=false \
    CARGO_PROFILE_RELEASE_STRIP=debuginfo
RUN cargo build --release --locked \
      -p homeport-cira-ingress -p homeport-mps-command -p homeport-audit \
      -p homeport-mqtt-bridge -p homeport-rps -p homeport-gateway -p homeport -p homeportctl \
      -p homeport-amt-sim \
 && mkdir -p /out \
 && cp target/release/cira-ingress target/release/mps-command target/release/audit \
       target/release/mqtt-bridge target/release/rps target/release/gateway \
       target/release/homeport target/release/homeportctl target/release/amt-sim /out/

FROM ${RUNTIME_IMAGE}
# ca-certificates for Vault and NATS over TLS; nats-server for the all-in-one's embedded NATS.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates nats-server \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /var/lib/homeport --create-home homeport \
 && install -d -o homeport -g homeport /var/lib/homeport/keys /var/lib/homeport/secrets
COPY --from=build /out/ /usr/local/bin/
COPY scripts/healthcheck.sh /usr/local/bin/homeport-healthcheck
COPY compose/init.sh /usr/local/bin/homeport-dev-init
USER 10001:10001
WORKDIR /var/lib/homeport
ENV HOMEPORT_DATA_DIR=/var/lib/homeport \
    HOMEPORT_SECRETS_FILE=/var/lib/homeport/secrets.enc \
    HOMEPORT_SECRETS_KEY_FILE=/var/lib/homeport/secrets.key \
    HOMEPORT_DATABASE_URL=sqlite:///var/lib/homeport/homeport.db?mode=rwc \
    HOMEPORT_HEALTH_LISTEN=0.0.0.0:9433
EXPOSE 4433 8080 8443 9433 9438 50051 50052 50053
# /readyz of whichever service runs (HOMEPORT_HEALTH_LISTEN's port).
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
  CMD ["/usr/local/bin/homeport-healthcheck"]
STOPSIGNAL SIGTERM
CMD ["homeport"]
