"""A local stand-in for WeCom group robots on 127.0.0.1 that enforces what the real ones do: a
sliding window of ``limit`` messages per ``window_s`` per robot key (beyond it: errcode 45009), at
most 4096 bytes of markdown content (beyond it: errcode 40058), unknown keys refused (errcode 93000).
It keeps every message it took and counts every one it throttled or refused.

A thread-run ``http.server``, so a worker in another process and an asyncio test alike can post to it;
arrival times are ``time.monotonic()``, the clock the notifier's window runs on.
"""

from __future__ import annotations

import json
import threading
import time
from collections import defaultdict, deque
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

MAX_CONTENT_BYTES = 4096


@dataclass(frozen=True)
class Taken:
    at: float
    key: str
    content: str


class WeComRobots:
    def __init__(self, keys: set[str], limit: int = 20, window_s: float = 60.0) -> None:
        self.keys, self.limit, self.window_s = keys, limit, window_s
        self.taken: list[Taken] = []
        self.throttled = 0
        self.refused: list[tuple[str, int]] = []  # (key, errcode)
        self._recent: dict[str, deque[float]] = defaultdict(deque)
        self._lock = threading.Lock()
        robots = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                arrived = time.monotonic()
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                key = parse_qs(urlparse(self.path).query).get("key", [""])[0]
                reply = robots._take(arrived, key, body)
                data = json.dumps(reply).encode()
                self.send_response(200)  # WeCom answers 200 and puts the verdict in errcode
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_port
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def url(self, key: str) -> str:
        return f"http://127.0.0.1:{self.port}/cgi-bin/webhook/send?key={key}"

    def _take(self, arrived: float, key: str, body: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            if key not in self.keys:
                self.refused.append((key, 93000))
                return {"errcode": 93000, "errmsg": "invalid webhook url, hint: [1700000000_1_abc]"}
            content = body.get("markdown", {}).get("content", "")
            if len(content.encode()) > MAX_CONTENT_BYTES:
                self.refused.append((key, 40058))
                return {"errcode": 40058, "errmsg": "markdown.content exceed max length 4096"}
            recent = self._recent[key]
            while recent and recent[0] <= arrived - self.window_s:
                recent.popleft()
            if len(recent) >= self.limit:
                self.throttled += 1
                return {"errcode": 45009, "errmsg": "api freq out of limit"}
            recent.append(arrived)
            self.taken.append(Taken(arrived, key, content))
            return {"errcode": 0, "errmsg": "ok"}

    def fill(self, key: str) -> None:
        """Someone else used up the robot's window just now."""
        with self._lock:
            self._recent[key].extend([time.monotonic()] * self.limit)

    def contents(self) -> list[str]:
        with self._lock:
            return [t.content for t in self.taken]

    def most_in_any_window(self, key: str) -> int:
        with self._lock:
            times = sorted(t.at for t in self.taken if t.key == key)
        return max((sum(1 for s in times[i:] if s < t + self.window_s) for i, t in enumerate(times)), default=0)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
