# syntax=docker/dockerfile:1
# One image for every role: `tollgate up | edge | decision | demo-upstream | stdio-bridge | check`.
#
#   docker build -t tollgate --build-arg TOLLGATE_COMMIT=$(git rev-parse HEAD) .
#   docker run --rm tollgate --version
#
# The runtime image is distroless: the binary, CA certificates and glibc; no shell, no package
# manager; it runs as the unprivileged user `nonroot` (uid 65532) and writes nothing outside
# /var/lib/tollgate (the decision journal, on a volume), so a read-only root filesystem works.

FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
# The build script names the commit in `tollgate --version`; .git is not copied in.
ARG TOLLGATE_COMMIT=unknown
ENV TOLLGATE_COMMIT=${TOLLGATE_COMMIT}
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p tollgate \
    && cp target/release/tollgate /tollgate \
    && mkdir -p /state/journal

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /tollgate /usr/local/bin/tollgate
# Where a decision replica's journal ([audit] journal_dir) is mounted: owned by `nonroot`, so a
# volume mounted there (Compose copies the ownership into a new named volume) is writable.
COPY --from=build --chown=65532:65532 /state /var/lib/tollgate
USER 65532:65532
# Edge (HTTP), decision (gRPC), decision metrics, operators' API.
EXPOSE 8080 50051 9464 9465
ENTRYPOINT ["/usr/local/bin/tollgate"]
CMD ["--help"]
