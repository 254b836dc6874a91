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
# The dashboard (src/http/ui.rs embeds it).
COPY ui ./ui
RUN cargo build --release --locked \
 && strip target/release/kindling

# The Secure Boot chain (profiles with loader = "grub"): Debian's signed shim and network GRUB,
# unpacked, never installed (their maintainer scripts act on a machine's own boot setup).
# Debian 13's GRUB 2.12: it also boots over UEFI HTTP boot, which Debian 12's 2.06 cannot.
FROM debian:trixie-slim AS signed
WORKDIR /signed
RUN apt-get update \
 && apt-get download shim-signed grub-efi-amd64-signed \
 && for d in *.deb; do dpkg-deb -x "$d" root; done \
 && rm -rf /var/lib/apt/lists/*

FROM debian:bookworm-slim
# ipxe: the iPXE binaries served over TFTP/HTTP (undionly.kpxe, ipxe.efi, snponly.efi).
RUN apt-get update \
 && apt-get install -y --no-install-recommends ipxe ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/kindling /usr/local/bin/kindling
# At the [paths] shim and grub defaults.
COPY --from=signed /signed/root/usr/lib/shim/shimx64.efi.signed /usr/lib/shim/shimx64.efi.signed
COPY --from=signed /signed/root/usr/lib/grub/x86_64-efi-signed/grubnetx64.efi.signed /usr/lib/grub/x86_64-efi-signed/grubnetx64.efi.signed
COPY ipxe /etc/kindling/ipxe
COPY profiles /etc/kindling/profiles
COPY scripts/container/kindling.toml /etc/kindling/kindling.toml
RUN mkdir -p /var/lib/kindling/assets /var/lib/kindling/state
VOLUME ["/var/lib/kindling/state"]
ENV KINDLING_CONFIG=/etc/kindling/kindling.toml
EXPOSE 8080/tcp 67/udp 69/udp 4011/udp 53/udp 53/tcp
ENTRYPOINT ["kindling"]
CMD ["serve"]
