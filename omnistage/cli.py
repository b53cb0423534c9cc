"""The ``omnistage`` command: tiny-models, validate, run, demo."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from omnistage.errors import GraphConfigError, OmnistageError
from omnistage.models.catalog import TINY_MODELS

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"  # the checkout's example graphs
DEFAULT_GRAPH = Path(__file__).resolve().parent / "graphs" / "default.yaml"  # ships with the package


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="omnistage", description=__doc__)
    parser.add_argument("--version", action="version", version=f"omnistage {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    tiny = sub.add_parser("tiny-models", help="write tiny random-weight checkpoints of real architectures")
    tiny.add_argument("dir", type=Path)
    tiny.add_argument("--only", nargs="+", choices=sorted(TINY_MODELS), help="build only these")
    val = sub.add_parser("validate", help="check a graph file and print its plan")
    val.add_argument("graph", type=Path, nargs="+")
    run = sub.add_parser("run", help="run requests through a graph offline and print the results")
    run.add_argument("graph", type=Path)
    run.add_argument("--prompt", action="append", required=True, help="a user message (repeat for several requests)")
    run.add_argument("--max-tokens", type=int, default=None)
    run.add_argument("--temperature", type=float, default=0.0)
    run.add_argument("--seed", type=int, default=None)
    run.add_argument("--json", action="store_true", help="print one JSON object per request")
    serve = sub.add_parser("serve", help="serve a graph behind an OpenAI-compatible HTTP API")
    serve.add_argument("graph", type=Path, nargs="?", default=DEFAULT_GRAPH,
                       help="graph file (default: the any-to-any graph on tiny models)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--api-key", default=None, help="require Authorization: Bearer KEY on /v1 routes")
    serve.add_argument("--media-dir", default=None,
                       help="let chat messages name local image/video files under this directory")
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    serve.add_argument("--log-format", default="text", choices=["text", "json"],
                       help="json: one JSON object per log line (request ids included)")
    serve.add_argument("--shutdown-timeout", type=float, default=10.0,
                       help="on SIGTERM/Ctrl-C, seconds open requests get to finish before they are aborted")
    bench = sub.add_parser("bench", help="load a running server and print latency percentiles (TTFT, ITL, ...)")
    from omnistage.bench.cli import add_arguments
    add_arguments(bench)
    demo = sub.add_parser("demo", help="run the default graph on the tiny models with a few sample requests")
    demo.add_argument("--graph", type=Path, default=DEFAULT_GRAPH)
    demo.add_argument("--out", type=Path, default=Path("demo-output"), help="where the client saves what it gets")
    args = parser.parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except KeyboardInterrupt:  # Ctrl-C after a clean shutdown (the server re-raises the signal)
        return 130
    except GraphConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except OmnistageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("omnistage")
    except PackageNotFoundError:
        return "unknown (not installed)"


def _tiny_models(args: argparse.Namespace) -> int:
    from omnistage.models.tiny import ensure_tiny
    for name in args.only or TINY_MODELS:
        print(f"{name:10s} {ensure_tiny(name, args.dir)}  ({TINY_MODELS[name]})")
    return 0


def _validate(args: argparse.Namespace) -> int:
    from omnistage.checkpoints import resolve_model
    from omnistage.graph.compile import compile_file
    from omnistage.graph.describe import describe
    status = 0
    for path in args.graph:
        try:
            print(describe(compile_file(path, resolve_model)))
        except GraphConfigError as exc:
            print(f"error: {exc}", file=sys.stderr)
            status = 1
    return status


def _run(args: argparse.Namespace) -> int:
    from omnistage.pipeline import Pipeline
    params = {"temperature": args.temperature, "seed": args.seed, "max_tokens": args.max_tokens}
    params = {k: v for k, v in params.items() if v is not None}
    with Pipeline.from_yaml(args.graph) as pipe:
        handles = [pipe.submit(messages=[{"role": "user", "content": p}], **params) for p in args.prompt]
        for prompt, handle in zip(args.prompt, handles):
            result = handle.result(timeout=600)
            if args.json:
                print(json.dumps({"prompt": prompt, "outputs": _jsonable(result.outputs), "usage": result.usage,
                                  "finish_reason": result.finish_reason}))
            else:
                print(f"> {prompt}\n{result.text!r}  [{result.usage['completion_tokens']} tokens, "
                      f"{result.finish_reason}]")
    return 0


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from omnistage.api.app import create_app
    from omnistage.checkpoints import resolve_model
    from omnistage.checkpoints.prepare import prepare_models
    from omnistage.graph.compile import compile_file
    prepare_models(compile_file(args.graph, resolve_model))  # fail fast on a bad graph; build tiny models visibly
    from omnistage.logs import setup_logging
    setup_logging(args.log_level, args.log_format)
    app = create_app(args.graph, api_key=args.api_key, media_dir=args.media_dir)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, log_config=None, access_log=False,
                timeout_graceful_shutdown=args.shutdown_timeout)
    return 0


def _demo(args: argparse.Namespace) -> int:
    """Serve the default graph and drive it with examples/client.py (chat, image, video)."""
    from omnistage.demo import run_demo
    return run_demo(args.graph, EXAMPLES / "client.py", args.out)


def _jsonable(outputs: dict) -> dict:
    return {k: v if isinstance(v, (str, int, float, list, dict)) else repr(v) for k, v in outputs.items()}


def _bench(args: argparse.Namespace) -> int:
    from omnistage.bench.cli import run
    return run(args)


COMMANDS = {"tiny-models": _tiny_models, "validate": _validate, "run": _run, "demo": _demo, "serve": _serve,
            "bench": _bench}

if __name__ == "__main__":
    sys.exit(main())
