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
    demo = sub.add_parser("demo", help="run the default graph on the tiny models with a few sample requests")
    demo.add_argument("--graph", type=Path, default=EXAMPLES / "vl_chat_epd.yaml")
    args = parser.parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except GraphConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except OmnistageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


def _tiny_models(args: argparse.Namespace) -> int:
    from omnistage.models.tiny import ensure_tiny
    for name in args.only or TINY_MODELS:
        print(f"{name:10s} {ensure_tiny(name, args.dir)}  ({TINY_MODELS[name]})")
    return 0


def _validate(args: argparse.Namespace) -> int:
    from omnistage.graph.compile import compile_file
    from omnistage.graph.describe import describe
    status = 0
    for path in args.graph:
        try:
            print(describe(compile_file(path)))
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
    from omnistage.graph.compile import compile_file
    compile_file(args.graph)  # fail fast, with the graph's errors, before starting anything
    uvicorn.run(create_app(args.graph, api_key=args.api_key), host=args.host, port=args.port, log_level="info")
    return 0


def _demo(args: argparse.Namespace) -> int:
    """Image+text chat through encode -> prefill -> decode workers on the tiny Qwen2-VL."""
    from omnistage.pipeline import Pipeline
    image = _demo_image()
    ask = [("What is in this picture?", [image]), ("What is in this picture?", [image]),
           ("Tell me a story about a cat who learned to sing.", [])]
    print(f"omnistage demo: {args.graph.name} on generated tiny models "
          "(random weights, so the text is noise; the plumbing is real)")
    with Pipeline.from_yaml(args.graph) as pipe:
        for question, images in ask:
            content = [{"type": "image"}] * len(images) + [{"type": "text", "text": question}]
            result = pipe.generate(messages=[{"role": "user", "content": content}], images=images or None,
                                   max_tokens=24, temperature=0)
            cached = max((m.get("cached_tokens", 0) for m in result.meta.values()), default=0)
            print(f"> {question} [{len(images)} image(s)]\n{result.text!r}\n"
                  f"  stages: {' -> '.join(result.meta)}; {result.usage['completion_tokens']} tokens, "
                  f"{cached} prompt tokens from the prefix cache")
    return 0


def _demo_image() -> bytes:
    import io

    from PIL import Image
    image = Image.new("RGB", (112, 84))
    image.putdata([(x * 2, y * 3, 128) for y in range(84) for x in range(112)])
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def _jsonable(outputs: dict) -> dict:
    return {k: v if isinstance(v, (str, int, float, list, dict)) else repr(v) for k, v in outputs.items()}


COMMANDS = {"tiny-models": _tiny_models, "validate": _validate, "run": _run, "demo": _demo, "serve": _serve}

if __name__ == "__main__":
    sys.exit(main())
