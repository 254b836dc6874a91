# Kindling container image.
#
#   docker build -t kindling .
#   docker run --rm --network host \
#     -v $PWD/my-kindling.toml:/etc/kindling/kindling.toml:ro \
#     -v $PWD/profiles:/etc/kindling/profiles:ro \
#     -v /srv/kindling/assets:/var/lib/kindling/assets:ro \
#     -v kindling-state:/var/lib/kindling/state \
#     kindling
#
# Host networking is required: DHCP answers broadcasts on the LAN, TFTP and proxy-DHCP use
# fixed ports, Wake-on-LAN sends broadcasts. Set server.base_url to the host's LAN address.

FROM rust:1.95-bookworm AS build
# protoc and its well-known types: etcd-client's build script compiles etcd's gRPC API.
RUN apt-get update \
 && apt-get install -y --no-install-recommends protobuf-compiler libprotobuf-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY ipxe ./ipxe
RUN cargo build --release --locked \
 && strip target/release/kindling

FROM debian:bookworm-slim
# ipxe: the iPXE binaries served over TFTP/HTTP (undionly.kpxe, ipxe.efi, snponly.efi).
RUN apt-get update \
 && apt-get install -y --no-install-recommends ipxe ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/kindling /usr/local/bin/kindling
COPY ipxe /etc/kindling/ipxe
COPY profiles /etc/kindling/profiles
COPY scripts/container/kindling.toml /etc/kindling/kindling.toml
RUN mkdir -p /var/lib/kindling/assets /var/lib/kindling/state
VOLUME ["/var/lib/kindling/state"]
ENV KINDLING_CONFIG=/etc/kindling/kindling.toml
EXPOSE 8080/tcp 67/udp 69/udp 4011/udp 53/udp 53/tcp
ENTRYPOINT ["kindling"]
CMD ["serve"]
