"""TEST HARNESS, not a ClickHouse server: the current ClickHouse engine
(chdb, ClickHouse built as a library) behind the subset of ClickHouse's HTTP
interface that the Rust `clickhouse` crate uses, so the integration tests
can run against a current engine where no current server package can be
installed.

What it serves: `GET /ping`; queries in the `query` URL parameter and/or
the body; `database` (as `USE`), `default_format`; inserts
(`INSERT ... FORMAT <fmt>` in the URL, data in the body, plain or chunked)
with the other URL parameters as the insert's SETTINGS; users from the
command line, checked from `X-ClickHouse-User`/`X-ClickHouse-Key` or Basic
auth; a read-only profile (statements other than reads refused with
ClickHouse's READONLY error); errors as HTTP 500 with the exception text and
`X-ClickHouse-Exception-Code`. One engine session serves every request, one
at a time.

Usage: serve.py --port P --path DIR --user NAME:PASSWORD:rw|ro ...
"""

import argparse
import base64
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, urlparse

from chdb import session

RESERVED = {
    "query", "database", "default_format", "user", "password", "query_id",
    "session_id", "decompress", "compress", "role", "session_timeout",
    "session_check", "wait_end_of_query",
}
READS = ("SELECT", "WITH", "SHOW", "DESCRIBE", "DESC", "EXISTS", "EXPLAIN")
INSERT_FORMAT = re.compile(r"^(?P<stmt>.*?)\s+FORMAT\s+(?P<fmt>\w+)\s*$", re.I | re.S)
CODE = re.compile(r"Code:\s*(\d+)")


class Engine:
    def __init__(self, path):
        self.session = session.Session(path)
        self.lock = threading.Lock()

    def run(self, database, sql, fmt, data=None, settings=()):
        with self.lock:
            self.session.query(f"USE `{database}`" if database else "USE default")
            if data is None:
                return self.session.query(sql, fmt).bytes()
            m = INSERT_FORMAT.match(sql)
            if not m:
                raise ValueError("Code: 62. DB::Exception: an INSERT with data needs FORMAT. (SYNTAX_ERROR)")
            stmt = m.group("stmt")
            if settings:
                stmt += " SETTINGS " + ", ".join(f"{k} = {v}" for k, v in settings)
            ins = self.session.send_insert(stmt, m.group("fmt"))
            ins.append(data)
            ins.finish()
            return b""


def make_handler(engine, users):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt, *args):  # quiet: the tests log enough
            pass

        def reply(self, status, body, headers=()):
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            for k, v in headers:
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(body)

        def body(self):
            if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                out = bytearray()
                while True:
                    size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                    if size == 0:
                        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                            pass
                        return bytes(out)
                    out += self.rfile.read(size)
                    self.rfile.readline()
            n = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(n) if n else b""

        def fail(self, status, text):
            code = CODE.search(text)
            headers = [("Content-Type", "text/plain; charset=UTF-8")]
            if code:
                headers.append(("X-ClickHouse-Exception-Code", code.group(1)))
            self.reply(status, (text.strip() + "\n").encode(), headers)

        def user(self, params):
            name = self.headers.get("X-ClickHouse-User") or params.get("user")
            key = self.headers.get("X-ClickHouse-Key") or params.get("password", "")
            auth = self.headers.get("Authorization", "")
            if auth.startswith("Basic "):
                name, _, key = base64.b64decode(auth[6:]).decode().partition(":")
            name = name or "default"
            known = users.get(name)
            if known is None or known[0] != key:
                return None, None
            return name, known[1]

        def handle_query(self, method):
            url = urlparse(self.path)
            if url.path in ("/ping", "/"):
                if method == "GET" and url.path == "/ping":
                    return self.reply(200, b"Ok.\n")
            params = dict(parse_qsl(url.query, keep_blank_values=True))
            body = self.body() if method == "POST" else b""
            name, readonly = self.user(params)
            if name is None:
                return self.fail(403, "Code: 516. DB::Exception: Authentication failed: password is incorrect, or there is no user with such name. (AUTHENTICATION_FAILED)")
            query = params.get("query")
            data = None
            if query is not None and body and INSERT_FORMAT.match(query) and query.lstrip().upper().startswith("INSERT"):
                sql, data = query, body
            else:
                sql = ((query or "") + " " + body.decode()).strip() if query else body.decode()
            if not sql:
                return self.fail(400, "Code: 62. DB::Exception: Empty query. (SYNTAX_ERROR)")
            if readonly and not sql.lstrip().upper().startswith(READS):
                return self.fail(500, f"Code: 164. DB::Exception: {name}: Cannot execute query in readonly mode. (READONLY)")
            settings = [(k, v if re.fullmatch(r"-?\d+", v) else "'" + v.replace("'", "\\'") + "'")
                        for k, v in params.items() if k not in RESERVED and not k.startswith("param_")]
            try:
                out = engine.run(params.get("database"), sql, params.get("default_format", "TabSeparated"), data, settings)
            except Exception as e:  # chdb raises its own error types
                return self.fail(500, str(e))
            self.reply(200, out, [("Content-Type", "application/octet-stream")])

        def do_GET(self):
            self.handle_query("GET")

        def do_POST(self):
            self.handle_query("POST")

    return Handler


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--path", required=True)
    p.add_argument("--user", action="append", default=[], help="NAME:PASSWORD:rw|ro")
    a = p.parse_args()
    users = {}
    for u in a.user:
        name, password, mode = u.rsplit(":", 2)
        users[name] = (password, mode == "ro")
    engine = Engine(a.path)
    version = engine.run(None, "SELECT version()", "TabSeparated").decode().strip()
    server = ThreadingHTTPServer(("127.0.0.1", a.port), make_handler(engine, users))
    server.daemon_threads = True
    print(f"chdb {version} serving ClickHouse HTTP on 127.0.0.1:{a.port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
