"""A keep-alive HTTP client for the e2e tests: Python's http.client, every request on one connection.

    keepalive_client.py HOST PORT SPEC_FILE OUT_FILE [--wait-stdin]

SPEC_FILE is JSON: a list of {"method": str, "target": str, "headers": {name: value}, "body": str|null}
(bodies are latin-1 text). OUT_FILE receives JSON: {"local_port": int, "responses": [{"status",
"reason", "headers": [[name, value], ...], "body": base64}, ...]}.

It connects first and prints "connected LOCAL_PORT". With --wait-stdin it then waits for a line on
stdin before each request and prints "done I" after reading response I, and waits for one more line
before closing the connection: a test can watch the tracer while the connection stays open (and can
start the tracer after the connection was made).
"""
import base64
import http.client
import json
import sys


def main() -> None:
    host, port, spec_file, out_file = sys.argv[1:5]
    wait = "--wait-stdin" in sys.argv
    with open(spec_file) as f:
        specs = json.load(f)
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    conn.connect()
    local_port = conn.sock.getsockname()[1]
    print("connected", local_port, flush=True)
    responses = []
    for i, spec in enumerate(specs):
        if wait and not sys.stdin.readline():
            break
        body = spec.get("body")
        conn.request(spec["method"], spec["target"], body=None if body is None else body.encode("latin-1"),
                     headers=spec.get("headers") or {})
        resp = conn.getresponse()
        data = resp.read()
        responses.append({"status": resp.status, "reason": resp.reason, "headers": resp.getheaders(),
                          "body": base64.b64encode(data).decode("ascii")})
        if wait:
            print("done", i, flush=True)
    if wait:
        sys.stdin.readline()
    conn.close()
    with open(out_file, "w") as f:
        json.dump({"local_port": local_port, "responses": responses}, f)


if __name__ == "__main__":
    main()
