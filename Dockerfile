# One image for the three services; compose picks the binary with `command`.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin ingest --bin aggregator --bin query

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home /var/lib/feedback feedback \
 && mkdir -p /var/lib/feedback/spool && chown -R feedback /var/lib/feedback
COPY --from=build /src/target/release/ingest /src/target/release/aggregator /src/target/release/query /usr/local/bin/
COPY config /etc/feedback
USER feedback
WORKDIR /var/lib/feedback
ENV RUST_LOG=info FEEDBACK_LOG_FORMAT=json
