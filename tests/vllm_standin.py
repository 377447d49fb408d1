"""A stand-in for vLLM's OpenAI-compatible server: the response shapes vLLM documents, no model behind them.

vLLM cannot be installed on a CPU machine, so tests replay its shapes: `/v1/models`, chat completions, and
completions with `logprobs` (the top next tokens and their log-probabilities). Replies are functions of the
request (the seed picks the text, the prompt picks the digit distribution), so samples differ and scores vary
the way a real model's would. It runs in a test's thread (`serve_in_thread`) or as the process a
`generate.serve_command` starts: `python -m tests.vllm_standin --port PORT MODEL`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def _digit_logprobs(prompt: str) -> dict[str, float]:
    """A distribution over the score digits that depends on the prompt (so responses score differently)."""
    h = hashlib.sha256(prompt.encode()).digest()
    weights = [1 + h[i] for i in range(6)]
    total = sum(weights) * 1.25  # a quarter of the mass on a word that is not a digit
    top = {str(d) if d % 2 else f" {d}": math.log(w / total) for d, w in enumerate(weights)}
    top["The"] = math.log(0.2)
    return top


class Replay(BaseHTTPRequestHandler):
    """vLLM-shaped answers; `server.behaviour` picks a failure to show."""

    def log_message(self, *args):  # keep the test output clean
        pass

    def do_GET(self):
        if self.path.endswith("/models"):
            return self._send(200, {"object": "list", "data": [
                {"id": name, "object": "model", "created": 0, "owned_by": "vllm", "root": name, "parent": None,
                 "max_model_len": 2048} for name in self.server.models]})
        if self.path == "/health":
            return self._send_raw(200, b"")
        return self._send(404, {"object": "error", "message": "not found"})

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.requests.append((self.path, body))
        behaviour = self.server.behaviour
        if behaviour == "fail-once" and not self.server.failed:
            self.server.failed = True
            return self._send(500, {"object": "error", "message": "engine busy", "type": "InternalServerError"})
        if behaviour == "malformed":
            return self._send_raw(200, b"{not json")
        if self.path.endswith("/chat/completions"):
            prompt = json.dumps(body["messages"])
            text = "same" if behaviour == "greedy" else self._text(body, prompt)
            return self._send(200, {
                "id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": body["model"],
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                             "logprobs": None, "finish_reason": "length"}],
                "usage": {"prompt_tokens": 7, "total_tokens": 11, "completion_tokens": 4}})
        if body.get("logprobs") is None:  # a text completion (served_api: completions)
            return self._send(200, {
                "id": "cmpl-1", "object": "text_completion", "created": 0, "model": body["model"],
                "choices": [{"index": 0, "text": self._text(body, body["prompt"]), "logprobs": None,
                             "finish_reason": "length"}],
                "usage": {"prompt_tokens": 30, "total_tokens": 34, "completion_tokens": 4}})
        top = self.server.fixed_logprobs or _digit_logprobs(body["prompt"])
        logprobs = None if behaviour == "no-logprobs" else {
            "text_offset": [0], "token_logprobs": [max(top.values())], "tokens": [max(top, key=top.get)],
            "top_logprobs": [top]}
        return self._send(200, {
            "id": "cmpl-1", "object": "text_completion", "created": 0, "model": body["model"],
            "choices": [{"index": 0, "text": max(top, key=top.get), "logprobs": logprobs, "finish_reason": "length"}],
            "usage": {"prompt_tokens": 30, "total_tokens": 31, "completion_tokens": 1}})

    @staticmethod
    def _text(body: dict, prompt: str) -> str:
        """`sample <seed>`, and a score line whose digit depends on the prompt (a judge's reply)."""
        digit = hashlib.sha256(prompt.encode()).digest()[0] % 6
        return f"sample {body['seed'] % 1000}. Score: {digit}"

    def _send(self, code: int, payload: dict) -> None:
        self._send_raw(code, json.dumps(payload).encode())

    def _send_raw(self, code: int, data: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def make_server(port: int = 0, models: tuple[str, ...] = ("smol",)) -> ThreadingHTTPServer:
    httpd = ThreadingHTTPServer(("127.0.0.1", port), Replay)
    httpd.requests, httpd.behaviour, httpd.failed = [], None, False
    httpd.models, httpd.fixed_logprobs = list(models), None
    return httpd


def serve_in_thread(models: tuple[str, ...] = ("smol",)) -> ThreadingHTTPServer:
    httpd = make_server(0, models)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="the model name it serves (a snapshot folder under serve_command)")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    make_server(args.port, (args.model,)).serve_forever()


if __name__ == "__main__":
    main()
