"""python -m lfm2_onnx.serve FOLDER|ORG/NAME: an OpenAI-compatible server with continuous batching.

    python -m lfm2_onnx.serve lfm2-350m-onnx --ep cuda --port 8000 [--max-batch 64] [--api-key KEY]
    python -m lfm2_onnx.serve my-org/LFM2-350M-ONNX --precision int4 [--revision v1]   # a published export

Endpoints: POST /v1/chat/completions, POST /v1/completions, GET /v1/models, GET /health (503 while
the model loads), GET /metrics (Prometheus). Needs the serve extra: pip install "lfm2-onnx[serve]".
wait_until_healthy(url) waits for a started server's model to load (standard library only).
"""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.error
import urllib.request

from .errors import ArgumentParser, UserError, cli_entry
from .hub import add_export_arguments


def parser() -> ArgumentParser:
    p = ArgumentParser(prog="python -m lfm2_onnx.serve", description=__doc__.split("\n\n")[0])
    add_export_arguments(p, "served")
    p.add_argument("--ep", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--max-batch", type=int, default=64, help="requests decoded together (slots); more wait")
    p.add_argument("--max-waiting", type=int, default=256, help="requests waiting for a slot before 429")
    p.add_argument("--max-length", type=int, help="KV positions per request (prompt + new tokens); default 4096")
    p.add_argument("--api-key", help="require Authorization: Bearer KEY on /v1 (or set LFM2_API_KEY)")
    p.add_argument("--served-model-name", help="the model id clients send (default: the repo id, or the folder's "
                                               "name)")
    p.add_argument("--prefill-wait-steps", type=int, default=4,
                   help="decode steps a new request may wait so that later arrivals share its prefill (0: none)")
    p.add_argument("--no-cuda-graph", action="store_true", help="run decode steps without CUDA graphs")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    return p


@cli_entry
def main(argv=None) -> int:
    args = parser().parse_args(argv)
    try:
        import uvicorn

        from .server import ServerConfig, create_app
    except ImportError as e:
        raise UserError(f"the server needs its extra ({e.name} is missing): pip install \"lfm2-onnx[serve]\"") from None
    if args.max_batch < 1 or args.max_waiting < 0 or args.prefill_wait_steps < 0:
        raise UserError("--max-batch must be at least 1, --max-waiting and --prefill-wait-steps at least 0")
    if not 0 < args.port < 65536:
        raise UserError(f"--port must be in 1..65535 (got {args.port})")
    from .lfm2_model import check_max_length
    from .session import check_ep_flag

    check_ep_flag(args.ep)
    config = ServerConfig(folder=args.folder, ep=args.ep, precision=args.precision, revision=args.revision,
                          max_batch=args.max_batch, max_length=args.max_length, max_waiting=args.max_waiting,
                          api_key=args.api_key or os.environ.get("LFM2_API_KEY"), model_name=args.served_model_name,
                          cuda_graph=not args.no_cuda_graph, prefill_wait_steps=args.prefill_wait_steps)
    # create_app resolves the folder or repo id to one variant (a pull downloads it): a wrong folder, id,
    # variant or revision fails here, in one line, before listening; the model loads once it listens.
    app = create_app(config)
    if args.max_length is not None:
        check_max_length(args.max_length, app.state.lfm2.layout.context_length, shown="--max-length")
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    return 0


def wait_until_healthy(url: str, timeout: float = 180, *, process=None, interval: float = 0.2) -> None:
    """Return once GET {url}/health answers 200, i.e. the server at url (http://host:port) has loaded
    its model. RuntimeError at once when the server reports that its model failed to load, or when
    `process` (its subprocess.Popen, if the caller started it) has exited; TimeoutError after timeout s."""
    health = url.rstrip("/") + "/health"
    deadline = time.monotonic() + timeout
    while True:
        if process is not None and process.poll() is not None:
            output = process.stdout.read() if process.stdout else ""
            raise RuntimeError(f"the server exited with code {process.returncode}" + (f": {output}" if output else ""))
        try:
            with urllib.request.urlopen(health, timeout=2) as response:
                if response.status == 200:
                    return
        except urllib.error.HTTPError as e:  # 503 while loading, or after the load failed
            try:
                body = json.loads(e.read())
            except (OSError, ValueError):
                body = {}
            if isinstance(body, dict) and body.get("status") == "error":
                raise RuntimeError(f"the server's model failed to load: {body.get('message')}") from None
        except OSError:  # not listening yet (URLError, a reset connection, a timeout)
            pass
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{health} did not answer 200 within {timeout:g} s")
        time.sleep(interval)


if __name__ == "__main__":
    sys.exit(main())
