#!/usr/bin/env python3
"""Asks a Kafka broker for its cluster metadata and prints the brokers it names.

Used by scripts/infra.sh to wait until the broker really answers, without the
heavy kafka-tools jars. Speaks Metadata v4 (Kafka 4.x removed v0-v3): request
header v1, an empty topic list (no topics asked), no auto-creation.
Exit 0 when the broker answered with at least one live broker, 1 otherwise.
"""

import socket
import struct
import sys


def recv_exact(sock, n):
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("connection closed")
        data += chunk
    return data


def probe(host, port, timeout):
    client_id = b"feedback-infra"
    header = struct.pack(">hhih", 3, 4, 7, len(client_id)) + client_id
    body = struct.pack(">ib", 0, 0)  # topics: empty array; allow_auto_topic_creation: false
    request = header + body
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.settimeout(timeout)
        sock.sendall(struct.pack(">i", len(request)) + request)
        (size,) = struct.unpack(">i", recv_exact(sock, 4))
        payload = recv_exact(sock, size)
    correlation_id, _throttle, broker_count = struct.unpack(">iii", payload[:12])
    if correlation_id != 7:
        raise ValueError("unexpected correlation id")
    brokers = []
    offset = 12
    for _ in range(broker_count):
        node_id, host_len = struct.unpack(">ih", payload[offset:offset + 6])
        offset += 6
        broker_host = payload[offset:offset + host_len].decode()
        offset += host_len
        (broker_port, rack_len) = struct.unpack(">ih", payload[offset:offset + 6])
        offset += 6 + max(rack_len, 0)
        brokers.append(f"{node_id}@{broker_host}:{broker_port}")
    return brokers


def main():
    address = sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:9092"
    host, port = address.rsplit(":", 1)
    try:
        brokers = probe(host, int(port), 2.0)
    except (OSError, ValueError, struct.error) as err:
        print(f"no answer: {err}", file=sys.stderr)
        return 1
    if not brokers:
        print("answered without live brokers", file=sys.stderr)
        return 1
    print(" ".join(brokers))
    return 0


if __name__ == "__main__":
    sys.exit(main())
