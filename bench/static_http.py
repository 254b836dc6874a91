#!/usr/bin/env python3
"""A plain static HTTP server (Python's standard library), the reference of bench/lab.sh.

    static_http.py ADDRESS PORT ROOT

Serves ROOT's files with GET and HEAD, as `python3 -m http.server` does, and answers any POST
with 200 (the lab OS reports to it as it would to Kindling). No request log.
"""
import functools
import http.server
import sys


class Handler(http.server.SimpleHTTPRequestHandler):
    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        self.send_response(200)
        self.send_header("Content-Length", "3")
        self.end_headers()
        self.wfile.write(b"ok\n")

    def log_message(self, *args):
        pass


def main():
    address, port, root = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    handler = functools.partial(Handler, directory=root)
    http.server.ThreadingHTTPServer((address, port), handler).serve_forever()


if __name__ == "__main__":
    main()
