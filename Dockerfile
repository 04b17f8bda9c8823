# syncgate container image.
#
#   docker build --build-arg SYNCGATE_COMMIT=$(git rev-parse --short=12 HEAD) -t syncgate .
#   docker run --rm -p 8080:8080 -p 127.0.0.1:9901:9901 \
#     -v /etc/syncgate:/etc/syncgate:ro syncgate
#
# The config (and the admin token file it names) is mounted at /etc/syncgate; syncgate reloads
# it by itself when it changes, including Kubernetes ConfigMap symlink swaps. Listen on
# 0.0.0.0 inside a container, and give the admin listener a token_file when it is not on
# loopback (syncgate refuses a non-loopback admin listener without one).

# --- build: the locked dependency set, release profile
FROM rust:1.95-bookworm AS build
WORKDIR /src
# What the binary is built from; benches/ only because Cargo.toml declares its targets.
COPY Cargo.toml Cargo.lock build.rs ./
COPY src ./src
COPY benches ./benches
ARG SYNCGATE_COMMIT=unknown
ENV SYNCGATE_COMMIT=${SYNCGATE_COMMIT}
RUN cargo build --release --locked --bin syncgate \
 && install -D -m 0755 target/release/syncgate /out/syncgate \
 && /out/syncgate man > /out/syncgate.1

# --- run: glibc and nothing else, as a non-root user
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/syncgate /usr/bin/syncgate
COPY --from=build /out/syncgate.1 /usr/share/man/man1/syncgate.1
COPY config.example.toml /etc/syncgate/syncgate.toml
USER nonroot:nonroot
# glibc keeps 7 freed blocks of each size per thread by default; a proxy thread allocates and
# frees in larger bursts, and every block past the 7th takes malloc's slow path. 128: 1.4-1.5%
# less CPU per request, no more memory per idle connection; within noise since the proxy
# threads reuse their request heads and header maps, kept for the allocations left
# (docs/benchmarks.md). The systemd units set the same.
ENV GLIBC_TUNABLES=glibc.malloc.tcache_count=128
EXPOSE 8080 8443 9901
# SIGTERM: stop accepting, finish in-flight requests within drain_timeout, exit 0. Give the
# runtime's stop timeout (docker stop -t, terminationGracePeriodSeconds) more than that.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/bin/syncgate"]
CMD ["run", "--config", "/etc/syncgate/syncgate.toml"]
