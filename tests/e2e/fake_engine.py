"""A throwaway stand-in for an engine process, for the local backend's tests.

Serves /health (503 until --startup-s passed) and /stats on 127.0.0.1:<port> with the standard
library only, so these tests exercise process handling without depending on the real engines.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

FATAL_PREFIX = "modelhost-fatal: "


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("port", type=int)
    p.add_argument("--startup-s", type=float, default=0.0)
    p.add_argument("--fail-start")
    p.add_argument("--ignore-sigterm", action="store_true")
    p.add_argument("--spawn-child", help="file to write a child process's pid to")
    p.add_argument("--no-http", action="store_true")
    args = p.parse_args()
    print("fake engine starting", flush=True)
    print("MODELHOST_ENV=" + ",".join(sorted(k for k in os.environ if k.startswith("MODELHOST_"))))
    print("HF_TOKEN_PRESENT=" + str("HF_TOKEN" in os.environ), flush=True)
    if args.spawn_child:
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
        with open(args.spawn_child, "w") as f:
            f.write(str(child.pid))
    if args.ignore_sigterm:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    else:
        signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    if args.fail_start:
        time.sleep(0.1)
        print("loading weights...", flush=True)
        print(FATAL_PREFIX + args.fail_start, file=sys.stderr, flush=True)
        sys.exit(3)
    if args.no_http:
        time.sleep(300)
        return
    ready_at = time.monotonic() + args.startup_s

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/health":
                ok = time.monotonic() >= ready_at
                self._send(200 if ok else 503, {"ok": ok})
            elif self.path == "/stats":
                self._send(200, {"running": 2, "waiting": 1, "max_batch_size": 8})
            else:
                self._send(404, {})

        def _send(self, code: int, body: dict[str, object]) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *a: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    while True:
        time.sleep(1)


if __name__ == "__main__":
    main()
