#!/usr/bin/env python3
"""The baseline of `feedbench` (BENCHMARKS.md, "Threat feeds"): what operators run today to serve a block list to
a FortiGate, a small script on Python's http.server, over TLS with basic auth, serving one file.

Standard library only. Serves FILE at /feeds/<file name>, with an ETag made of its size and modification time (as
nginx does) and 304 for a matching If-None-Match; one thread per connection, the TLS handshake in that thread; no
request log. The password comes from $FEED_PASSWORD. Prints "listening on HOST:PORT" once it accepts.

    FEED_PASSWORD=... python3 bench/feed_baseline.py --cert feed.crt --key feed.key --file fortimisp-block.txt
"""
import argparse, base64, hmac, os, shutil, ssl
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

args = argparse.ArgumentParser()
args.add_argument("--cert", required=True)
args.add_argument("--key", required=True)
args.add_argument("--file", required=True)
args.add_argument("--user", default="fortigate")
args.add_argument("--listen", default="127.0.0.1")
args.add_argument("--port", type=int, default=0)
a = args.parse_args()
expected = "Basic " + base64.b64encode(f"{a.user}:{os.environ['FEED_PASSWORD']}".encode()).decode()
path = "/feeds/" + os.path.basename(a.file)
tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
tls.load_cert_chain(a.cert, a.key)


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        if not hmac.compare_digest(self.headers.get("Authorization", ""), expected):
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="feed"')
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif self.path != path:
            self.send_error(404)
        else:
            with open(a.file, "rb") as f:
                st = os.fstat(f.fileno())
                etag = f'"{st.st_mtime_ns:x}-{st.st_size:x}"'
                if self.headers.get("If-None-Match") == etag:
                    self.send_response(304)
                    self.send_header("ETag", etag)
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(st.st_size))
                self.send_header("ETag", etag)
                self.end_headers()
                shutil.copyfileobj(f, self.wfile)

    def log_message(self, *_):
        pass


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def finish_request(self, request, client_address):
        # The handshake in the connection's own thread, so a slow client does not stall accept().
        with tls.wrap_socket(request, server_side=True) as conn:
            self.RequestHandlerClass(conn, client_address, self)


server = Server((a.listen, a.port), Handler)
print("listening on %s:%d" % server.server_address[:2], flush=True)
server.serve_forever()
