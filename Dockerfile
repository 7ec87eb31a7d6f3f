# syntax=docker/dockerfile:1
#
# docker build -t tokengate:0.1.0 .
#
# Build: the release profile of Cargo.toml (fat LTO, one codegen unit), exactly the
# locked dependencies, without the default `sim` feature: no simulated API server and
# no token-minting code in the image (`tokengate dev` and `sim` are not there). The builder is Debian bookworm, so the binary links against
# bookworm's glibc, which is what the runtime image below carries.
FROM rust:1.89-bookworm AS build
WORKDIR /src
COPY . .
# Cache mounts keep the registry and target/ between builds (BuildKit); the binary is
# copied out because the target/ mount does not outlive this step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --no-default-features \
 && cp target/release/tokengate /tokengate

# Run: distroless "cc": glibc, libgcc (for unwinding a panic, see panic = "unwind"),
# CA certificates and nothing else: no shell, no package manager. glibc rather than a
# fully static musl build: musl's allocator is markedly slower under the many threads
# of a tokio server, and this is a latency path; the binary needs no OpenSSL (rustls).
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /tokengate /tokengate
# distroless's `nonroot` user, by number, so Kubernetes' runAsNonRoot can verify it
# (deploy/deployment.yaml runs as the same UID).
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/tokengate"]
CMD ["serve", "--config", "/etc/tokengate/tokengate.toml"]
