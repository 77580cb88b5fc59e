#!/usr/bin/env python3
"""A tiny application in another language behind micro-tomcat (upstream mode), standard library only.

Run one per node, then point each node at its own:
    python3 examples/upstream_app.py 9001 &
    micro-tomcat run --config cluster-config.xml --name node-1 --upstream http://127.0.0.1:9001

Every request the node serves reaches this app with three headers:
    X-Micro-Tomcat-Session      the session cookie's value (absent for a new visitor)
    X-Micro-Tomcat-Node         the node that forwarded it
    X-Micro-Tomcat-Session-Api  that node's session API, e.g. http://127.0.0.1:8081/api/sessions
The app keeps its state in the cluster's replicated sessions through that API, so any node can serve
any visitor, and a node (or this app) can die without losing a visit.

When the nodes run with an admin token, session writes through the API need it: start the app with
the same MICRO_TOMCAT_ADMIN_TOKEN in its environment and it sends `Authorization: Bearer <token>`.

GET /visits  -> {"visits": n, "node": "...", "app": "python"}   (a per-visitor counter)
GET /health  -> ok
"""

import json
import os
import sys
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

COOKIE = "MTSESSIONID"
ADMIN_TOKEN = os.environ.get("MICRO_TOMCAT_ADMIN_TOKEN", "").strip()


def call(method, url, body=None, headers=None):
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    request.add_header("Content-Type", "application/json")
    if ADMIN_TOKEN:
        request.add_header("Authorization", "Bearer " + ADMIN_TOKEN)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"null")


class App(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def reply(self, status, document, cookie=None):
        body = json.dumps(document).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        if cookie:
            self.send_header("Set-Cookie", f"{COOKIE}={cookie}; Path=/; HttpOnly")
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.path == "/health":
            return self.reply(200, "ok")
        if self.path != "/visits":
            return self.reply(404, {"error": "no such page"})
        api = self.headers.get("X-Micro-Tomcat-Session-Api")
        node = self.headers.get("X-Micro-Tomcat-Node", "?")
        session = self.headers.get("X-Micro-Tomcat-Session")
        if not api:
            return self.reply(500, {"error": "not behind micro-tomcat"})
        if session:
            # Compare-and-set loop: another node may update the same visitor at the same time.
            for _ in range(10):
                status, doc = call("GET", f"{api}/{session}")
                if status != 200:
                    break
                visits = doc["data"].get("visits", 0) + 1
                status, _ = call("PUT", f"{api}/{session}", {"visits": visits},
                                 {"If-Match": str(doc["version"])})
                if status == 200:
                    return self.reply(200, {"visits": visits, "node": node, "app": "python"})
                if status != 412:
                    return self.reply(503, {"error": f"session api answered {status}"})
        status, doc = call("POST", api, {"visits": 1})
        if status != 201:
            return self.reply(503, {"error": f"session api answered {status}"})
        return self.reply(200, {"visits": 1, "node": node, "app": "python"}, cookie=doc["id"])

    def log_message(self, format, *args):
        pass


if __name__ == "__main__":
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 9000
    ThreadingHTTPServer(("127.0.0.1", port), App).serve_forever()
