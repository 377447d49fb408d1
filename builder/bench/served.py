"""Benchmark: generation through `transformers serve` (the openai backend) against the in-process hf backend.

Both run the generate stage on the same prompts (cpu-demo settings, chunk 1) from copies of one prepared store;
the served run goes through a real `transformers serve` on 127.0.0.1 on the same model folder (set to sample).
Then the client's own overhead: the same one-token chat request sent N times through the backend (one in flight)
and as plain HTTP calls (urllib), one after the other.

    python -m builder.bench.served [--work DIR] [--calls 20]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

BIN = Path(sys.executable).parent


def _tsr(data: Path, *args: str) -> None:
    subprocess.run([str(BIN / "tsr"), "--data", str(data), *args], check=True, stdout=subprocess.DEVNULL)


def _port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _serve(folder: Path, port: int) -> subprocess.Popen:
    process = subprocess.Popen([str(BIN / "transformers"), "serve", str(folder), "--host", "127.0.0.1", "--port",
                                str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                return process
        except OSError:
            time.sleep(0.5)
    os.killpg(process.pid, signal.SIGKILL)
    sys.exit("transformers serve did not come up (pip install 'transformers[serving]')")


def _stage_seconds(data: Path) -> float:
    from builder.store import Store

    (manifest,) = Store.open(data).manifests(table="generations")
    return manifest.stats["seconds"]


def _overhead(url: str, model: str, calls: int) -> tuple[float, float]:
    """Seconds per one-token chat call: through the backend (one in flight), and as plain urllib POSTs."""
    from builder.backends.base import GenRequest, SamplingSettings
    from builder.backends.served import ServedGenerator

    messages = [{"role": "user", "content": "Say yes."}]
    sampling = SamplingSettings(temperature=0.0, top_p=1.0, max_new_tokens=1)
    backend = ServedGenerator(url, model, max_in_flight=1, batch_size=1)
    started = time.perf_counter()
    for index in range(calls):
        list(backend.generate([GenRequest(key=str(index), messages=messages, seed=index)], sampling))
    through_backend = (time.perf_counter() - started) / calls
    body = json.dumps({"model": model, "messages": messages, "max_tokens": 1, "temperature": 0.0}).encode()
    started = time.perf_counter()
    for _ in range(calls):
        request = urllib.request.Request(f"{url}/chat/completions", data=body,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=120) as response:
            json.loads(response.read())
    raw = (time.perf_counter() - started) / calls
    return through_backend, raw


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one)")
    parser.add_argument("--calls", type=int, default=20, help="one-token calls for the client overhead")
    args = parser.parse_args(argv)

    from builder.config import profiles_dir

    with tempfile.TemporaryDirectory(prefix="tsr-bench-served-", dir=args.work) as scratch:
        root = Path(scratch)
        prepared = root / "prepared"
        _tsr(prepared, "models", "add", "--default")
        (folder,) = (prepared / "snapshots").iterdir()
        model = root / "model"
        shutil.copytree(folder, model)
        config = json.loads((model / "generation_config.json").read_text("utf-8"))
        (model / "generation_config.json").write_text(json.dumps({**config, "do_sample": True}), "utf-8")
        text = (profiles_dir() / "cpu-demo.yaml").read_text("utf-8")

        shutil.copytree(prepared, root / "hf")
        started = time.perf_counter()
        _tsr(root / "hf", "generate", "--snapshot", "SmolLM2-135M-Instruct")
        hf_wall, hf_stage = time.perf_counter() - started, _stage_seconds(root / "hf")

        port = _port()
        url = f"http://127.0.0.1:{port}/v1"
        server = _serve(model, port)
        try:
            profile = root / "served.yaml"
            profile.write_text(text.replace("  backend: hf\n", f'  backend: openai\n  base_url: "{url}"\n'
                                            f'  served_model: "{model}"\n  max_in_flight: 8\n'), "utf-8")
            shutil.copytree(prepared, root / "served")
            started = time.perf_counter()
            _tsr(root / "served", "generate", "--snapshot", "SmolLM2-135M-Instruct", "--profile", str(profile))
            served_wall, served_stage = time.perf_counter() - started, _stage_seconds(root / "served")
            through_backend, raw = _overhead(url, str(model), args.calls)
        finally:
            os.killpg(server.pid, signal.SIGKILL)
        print(f"generate, 16 samples of the embedded model (cpu-demo), {os.cpu_count()} cores:")
        print(f"  hf in-process              wall {hf_wall:6.1f} s  stage {hf_stage:6.1f} s")
        print(f"  openai -> transformers serve  wall {served_wall:6.1f} s  stage {served_stage:6.1f} s  "
              f"served/hf {served_stage / hf_stage:.2f}x stage")
        print(f"one-token chat call, {args.calls} in a row: backend {through_backend * 1000:.1f} ms, raw HTTP "
              f"{raw * 1000:.1f} ms, backend/raw {through_backend / raw:.2f}x")


if __name__ == "__main__":
    main()
