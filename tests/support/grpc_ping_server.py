#!/usr/bin/env python3
"""A grpc.health.v1 server (Python grpcio, i.e. grpc-core) on a free 127.0.0.1 port, with
grpc-core's keep-alive ping policy (gRFC A8), for tests/keepalive.rs.

Prints the port on stdout (one line), then serves until stdin closes (the test's end, or its
death) or it is killed. The services "" and "billing" report SERVING.

grpc-core's defaults: pings on a connection without calls are not allowed
(grpc.keepalive_permit_without_calls = 0), with calls at most one every 5 minutes
(grpc.http2.min_ping_interval_without_data_ms = 300000); past grpc.http2.max_ping_strikes
(2) early pings it sends GOAWAY ENHANCE_YOUR_CALM "too_many_pings". The options below only
lower the tolerances, to keep the tests short (max_ping_strikes 0 means no limit, so 1 is
the strictest).

Requires: pip install grpcio grpcio-health-checking
"""

import argparse
import sys
from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--max-ping-strikes", type=int, default=None,
                        help="grpc.http2.max_ping_strikes (default: grpc-core's, 2)")
    parser.add_argument("--min-ping-interval-ms", type=int, default=None,
                        help="grpc.http2.min_ping_interval_without_data_ms (default: 300000)")
    args = parser.parse_args()

    options = []
    if args.max_ping_strikes is not None:
        options.append(("grpc.http2.max_ping_strikes", args.max_ping_strikes))
    if args.min_ping_interval_ms is not None:
        options.append(("grpc.http2.min_ping_interval_without_data_ms", args.min_ping_interval_ms))

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), options=options)
    servicer = health.HealthServicer()
    for service in ("", "billing"):
        servicer.set(service, health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    if port == 0:
        sys.exit("could not bind a port on 127.0.0.1")
    server.start()
    print(port, flush=True)

    # Serve until stdin closes: the test closes it (or dies) when done.
    sys.stdin.read()
    server.stop(grace=None)


if __name__ == "__main__":
    main()
