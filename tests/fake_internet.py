"""A fake "internet" host for the network tests, run inside a network namespace the test made.

Serves, on ADDR: HTTP on 8080 and 8081 (GET answers "hello <path> host=<Host header>", POST
echoes its body), bulk TCP on 9000 (a client sends b"B" and gets N MiB, default 50), and DNS on
UDP 53 (any A question answered with ADDR, the name "nx.test" with NXDOMAIN); with N = 0,
only the DNS server. Prints "ready" on
stdout once every socket listens. Started and killed by pid by the test that made the namespace.
"""

from __future__ import annotations

import socket
import struct
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    def _answer(self, body: bytes) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self._answer(f"hello {self.path} host={self.headers.get('Host')}\n".encode())

    def do_POST(self) -> None:  # noqa: N802
        n = int(self.headers.get("Content-Length", "0"))
        self._answer(b"echo " + self.rfile.read(n))

    def log_message(self, *args: object) -> None:
        pass


def bulk(s: socket.socket, mib: int) -> None:
    chunk = b"x" * (1 << 20)
    while True:
        c, _ = s.accept()
        try:
            if c.recv(1) == b"B":
                for _ in range(mib):
                    c.sendall(chunk)
        except OSError:
            pass
        c.close()


def dns(s: socket.socket, addr: str) -> None:
    while True:
        q, peer = s.recvfrom(512)
        try:
            answer_one(s, q, peer, addr)
        except (IndexError, OSError):  # a malformed query gets no answer, the server stays
            pass


def answer_one(s: socket.socket, q: bytes, peer: tuple[str, int], addr: str) -> None:
    if len(q) < 12:
        return
    qid = q[:2]
    end = 12
    labels = []
    while q[end]:
        labels.append(q[end + 1:end + 1 + q[end]].decode("ascii", "replace"))
        end += q[end] + 1
    question = q[12:end + 5]
    name = ".".join(labels)
    if name == "nx.test":
        s.sendto(qid + b"\x81\x83" + b"\x00\x01\x00\x00\x00\x00\x00\x00" + question, peer)
        return
    answer = b"\xc0\x0c\x00\x01\x00\x01" + struct.pack(">IH", 60, 4) + socket.inet_aton(addr)
    s.sendto(qid + b"\x81\x80" + b"\x00\x01\x00\x01\x00\x00\x00\x00" + question + answer,
             peer)


def main() -> None:
    addr = sys.argv[1]
    mib = int(sys.argv[2]) if len(sys.argv) > 2 else 50
    if mib == 0:  # DNS only (a resolver on a host's loopback)
        d = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        d.bind((addr, 53))
        print("ready", flush=True)
        dns(d, addr)
    servers = [ThreadingHTTPServer((addr, port), Handler) for port in (8080, 8081)]
    for srv in servers:
        threading.Thread(target=srv.serve_forever, daemon=True).start()
    b = socket.socket()
    b.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    b.bind((addr, 9000))
    b.listen(16)
    d = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    d.bind((addr, 53))
    threading.Thread(target=bulk, args=(b, mib), daemon=True).start()
    threading.Thread(target=dns, args=(d, addr), daemon=True).start()
    print("ready", flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    main()
