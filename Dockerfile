# syntax=docker/dockerfile:1
# The policyhub server image: the `policyhub` binary alone on distroless.
#
#   docker build -t policyhub:0.1.0 .
#   docker run --rm policyhub:0.1.0 --help
#
# It runs `policyhub serve --listen 0.0.0.0:50051` as the non-root user 65532
# (`nonroot`), with no shell: inside a container only listening on every
# interface makes the exposed port reachable (authentication stays on).
# Settings come from a file (`serve --config FILE`), POLICYHUB_* variables and
# flags; the Helm chart (helm/policyhub) passes its own arguments, which
# replace this CMD, and mounts its configuration file.

# --- build -------------------------------------------------------------------
FROM rust:1-bookworm AS builder
WORKDIR /src
# The whole workspace (.dockerignore keeps out target/, .git and local data):
# build.rs compiles proto/, the workspace includes migrations/, and Cargo
# checks the test target paths named in Cargo.toml.
COPY . .
# Cache mounts keep the crate registry and target/ between builds; the binary
# is copied out of the cache for the next stage.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin policyhub \
 && cp target/release/policyhub /policyhub

# --- run ---------------------------------------------------------------------
# glibc, libgcc and CA certificates; no shell, no package manager. Debian 12 like
# the builder, so the glibc matches.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=builder /policyhub /policyhub
# nonroot, by number: Kubernetes can only verify runAsNonRoot for a numeric user.
USER 65532:65532
# The home of nonroot, writable: the default data directory `data` lands here
# when no data_dir is configured (the chart sets /var/lib/policyhub).
WORKDIR /home/nonroot
# gRPC, and the Prometheus metrics (metrics_listen).
EXPOSE 50051 9090
ENTRYPOINT ["/policyhub"]
CMD ["serve", "--listen", "0.0.0.0:50051"]
