# syntax=docker/dockerfile:1
#
# dmflow's four commands in one image: worker, starter, localhub and simdevice
# in /usr/local/bin. There is no ENTRYPOINT: the command line names the
# command, and without one the container runs the worker.
#
#   docker build -t dmflow .
#   docker run --rm dmflow starter --help
#   docker run --rm -p 8883:8883 -p 8443:8443 -v localhub:/var/lib/localhub dmflow localhub
#
# docker-compose.yml builds and runs it; deploy/compose_test.go checks this
# file's shape (stages, the builder's Go version against go.mod, the user).

# golang:1.26.8-bookworm: go.mod asks for go 1.26.0; 1.26.8 is the newest
# 1.26 patch release (the security fixes) and the toolchain the tests run
# with. Pinned to the patch, so a rebuild never picks another compiler;
# GOTOOLCHAIN=local keeps go from fetching one. The Debian release does not
# matter: the binaries are static (CGO_ENABLED=0).
FROM golang:1.26.8-bookworm AS build
WORKDIR /src
ENV CGO_ENABLED=0 GOTOOLCHAIN=local GOFLAGS=-trimpath

# Modules in their own layer: a source edit reuses it. The cache mounts keep
# downloads and compiled packages across builds (BuildKit, the default builder).
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/go/pkg/mod \
    go mod download

COPY . .
# -s -w drop the symbol table and DWARF (about 30% of each binary); panics
# still print function names and lines.
RUN --mount=type=cache,target=/go/pkg/mod \
    --mount=type=cache,target=/root/.cache/go-build \
    go build -ldflags="-s -w" -o /out/ ./worker ./starter ./localhub ./simdevice

# alpine:3.24.2 rather than a distroless image: the compose stack runs one
# line of shell before the worker and the simulated fleet (reading the
# service key localhub generates in its state volume) and in the localhub
# health check (busybox nc), which distroless has no shell for. Alpine's base
# brings the CA roots (ca-certificates-bundle) that Azure IoT Hub and Temporal
# Cloud certificates chain to. Pinned to the patch release; bump it (and the
# builder) deliberately.
FROM alpine:3.24.2 AS runtime

# A fixed, unprivileged UID/GID (not 0, above the host's usual user range), so
# that volume permissions and Kubernetes' runAsNonRoot checks are predictable.
# /var/lib/localhub belongs to it: a named volume mounted there starts with
# this owner and mode, so localhub (and the worker, same user) can use it.
RUN addgroup -S -g 10001 dmflow \
    && adduser -S -D -H -u 10001 -G dmflow -h /nonexistent -s /sbin/nologin dmflow \
    && install -d -o 10001 -g 10001 -m 0700 /var/lib/localhub

COPY --from=build /out/ /usr/local/bin/

# localhub keeps its store, CA and policy key here unless told otherwise; the
# `localhub connection-string` the compose services run reads the same place.
ENV DMFLOW_LOCALHUB_STATE_DIR=/var/lib/localhub

LABEL org.opencontainers.image.title="dmflow" \
      org.opencontainers.image.description="Durable Azure IoT Hub device-management workflows on Temporal: worker, starter, localhub, simdevice"

# localhub: device MQTT over TLS, service REST over HTTPS.
EXPOSE 8883 8443

USER 10001:10001
CMD ["worker"]
