"""The ``omnistage`` command: tiny-models, validate, run, demo."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from omnistage.errors import GraphConfigError, OmnistageError
from omnistage.graph.gpu_budget import GIB, GpuBudgetError
from omnistage.models.catalog import TINY_MODELS

if TYPE_CHECKING:
    from omnistage.checkpoints.recipes import ServeSettings
    from omnistage.graph.plan import GraphPlan

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"  # the checkout's example graphs
DEFAULT_GRAPH = Path(__file__).resolve().parent / "graphs" / "default.yaml"  # ships with the package


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="omnistage", description=__doc__)
    parser.add_argument("--version", action="version", version=f"omnistage {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    tiny = sub.add_parser("tiny-models", help="write tiny random-weight checkpoints of real architectures")
    tiny.add_argument("dir", type=Path)
    tiny.add_argument("--only", nargs="+", choices=sorted(TINY_MODELS), help="build only these")
    sub.add_parser("models", help="print the architectures `serve MODEL` takes, the graph it builds for each, "
                                  "and the tiny checkpoint each is tested on (Markdown)")
    val = sub.add_parser("validate", help="check graph files or models and print their plans")
    val.add_argument("graph", nargs="+", help="a graph file, or a model (checkpoint directory, hub id, tiny:NAME)")
    add_model_flags(val)
    val.add_argument("--gpu-memory-gib", type=float, default=None,
                     help="also divide each GPU the graph uses, as cards of this many GiB, among the replicas "
                          "placed on it, and print the shares (refused when over-committed)")
    run = sub.add_parser("run", help="run requests through a graph (or a model) offline and print the results")
    run.add_argument("graph", help="a graph file, or a model")
    add_model_flags(run)
    run.add_argument("--prompt", action="append", required=True, help="a user message (repeat for several requests)")
    run.add_argument("--max-tokens", type=int, default=None)
    run.add_argument("--temperature", type=float, default=0.0)
    run.add_argument("--seed", type=int, default=None)
    run.add_argument("--json", action="store_true", help="print one JSON object per request")
    serve = sub.add_parser("serve", help="serve a graph or a model behind an OpenAI-compatible HTTP API")
    serve.add_argument("graph", nargs="?", default=str(DEFAULT_GRAPH),
                       help="a graph file, or a model: a checkpoint directory, a hub id (org/name), tiny:NAME "
                            "(default: the any-to-any graph: SmolLM2 chat, the rest on tiny models)")
    add_model_flags(serve)
    serve.add_argument("--print-graph", action="store_true",
                       help="print the graph YAML built for the model (to save and edit) and exit")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--api-key", default=None, help="require Authorization: Bearer KEY on /v1 routes")
    serve.add_argument("--media-dir", default=None,
                       help="let chat messages name local image/video files under this directory")
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    serve.add_argument("--log-format", default="text", choices=["text", "json"],
                       help="json: one JSON object per log line (request ids included)")
    serve.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                       help="start every stage replica as a Ray actor: on the cluster at ADDRESS (auto: the one "
                            "this host is in; ray://HOST:PORT), or on a local Ray started for it without one")
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


def add_model_flags(parser: argparse.ArgumentParser) -> None:
    """The flags users know from ``vllm serve``; they shape the graph built for a model."""
    parser.add_argument("--served-model-name", default=None, help="the model name clients send (default: MODEL "
                        "as given, or the graph's name)")
    parser.add_argument("--dtype", default="auto", choices=["auto", "bfloat16", "float16", "float32"],
                        help="weights' dtype (auto: the checkpoint's own)")
    parser.add_argument("--device", default=None, help="device of every stage: cpu, cuda, cuda:N (default: cpu)")
    parser.add_argument("--max-model-len", type=_positive, default=None,
                        help="longest sequence, prompt + output (default: the model's context length)")
    parser.add_argument("--gpu-memory-utilization", dest="memory_utilization", type=float, default=None,
                        help="share of the device's memory for weights and KV cache (default 0.9 on a GPU; on a "
                             "CPU the KV cache's share of available RAM, default 0.1)")
    parser.add_argument("--kv-cache-memory", type=_bytes, default=None,
                        help="KV cache size in bytes (suffixes K, M, G: binary), overriding the share above")
    parser.add_argument("--max-num-seqs", type=_positive, default=None,
                        help="sequences per step of the AR engine stages (their max_batch)")
    parser.add_argument("--chat-template", default=None, help="a Jinja chat template, or a file holding one")
    parser.add_argument("--enable-prefix-caching", dest="prefix_caching", action=argparse.BooleanOptionalAction,
                        default=None, help="reuse the KV of prompt prefixes seen before (default: on)")
    parser.add_argument("--max-num-batched-tokens", dest="max_tokens_per_step", type=_positive, default=None,
                        help="tokens per step of the AR engine stages, prefill chunks and decodes together "
                             "(default 2048)")


def _bytes(text: str) -> int:
    """A size in bytes, at least 1 MiB (``1073741824``, ``1e9``, ``512M``, ``4G``, ``4GiB``)."""
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    plain = text.strip().upper().removesuffix("B").removesuffix("I")
    try:
        size = int(float(plain[:-1]) * units[plain[-1]]) if plain and plain[-1] in units else int(float(plain))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size in bytes (e.g. 4G, 512M)") from None
    if size < 1 << 20:
        raise argparse.ArgumentTypeError(f"{text!r} is less than 1 MiB")
    return size


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be > 0")
    return value


def _settings(args: argparse.Namespace) -> ServeSettings:
    from omnistage.checkpoints.recipes import ServeSettings
    template = args.chat_template
    if template is not None and "{" not in template and Path(template).expanduser().is_file():
        template = str(Path(template).expanduser().resolve())
    kv_mb = None if args.kv_cache_memory is None else args.kv_cache_memory >> 20  # (whole MiB, at least 1)
    return ServeSettings(served_model_name=args.served_model_name, dtype=args.dtype, device=args.device,
                         max_model_len=args.max_model_len, memory_utilization=args.memory_utilization,
                         kv_cache_mb=kv_mb, max_num_seqs=args.max_num_seqs, chat_template=template,
                         prefix_caching=args.prefix_caching, max_tokens_per_step=args.max_tokens_per_step)


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


def _models(args: argparse.Namespace) -> int:
    from omnistage.checkpoints.table import supported_table
    print(supported_table())
    return 0


def _validate(args: argparse.Namespace) -> int:
    from omnistage.checkpoints.target import load
    from omnistage.graph.describe import describe
    status = 0
    for target in args.graph:
        try:
            plan, built = load(target, _settings(args))
            if built is not None:
                print(built)
            print(describe(plan))
            if args.gpu_memory_gib is not None:
                print(_gpu_tables(plan, args.gpu_memory_gib))
        except (GraphConfigError, GpuBudgetError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            status = 1
    return status


def _gpu_tables(plan: GraphPlan, gib: float) -> str:
    from omnistage.checkpoints.gpu_needs import gpu_budgets
    budgets = gpu_budgets(plan, int(gib * GIB))
    return "\n".join(["GPU memory:", *(b.table() for b in budgets.values())] if budgets else ["GPU memory: no stage on a GPU"])


def _run(args: argparse.Namespace) -> int:
    from omnistage.checkpoints.prepare import prepare_models
    from omnistage.checkpoints.target import load_plan
    from omnistage.pipeline import Pipeline
    params = {"temperature": args.temperature, "seed": args.seed, "max_tokens": args.max_tokens}
    params = {k: v for k, v in params.items() if v is not None}
    plan = load_plan(args.graph, _settings(args))
    prepare_models(plan)
    with Pipeline(plan) as pipe:
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
    from omnistage.checkpoints.prepare import prepare_models
    from omnistage.checkpoints.target import graph_text, is_graph_file, load_plan
    if args.print_graph:
        if is_graph_file(args.graph):
            print(Path(args.graph).read_text(), end="")
        else:
            print(graph_text(args.graph, _settings(args)), end="")
        return 0
    plan = load_plan(args.graph, _settings(args))  # fail fast on a bad graph or an unsupported model
    if args.ray is not None:
        from omnistage.graph.compile import with_launcher
        from omnistage.graph.schema import LauncherConfig
        plan = with_launcher(plan, LauncherConfig("ray", args.ray or None, plan.config.launcher.namespace))
    prepare_models(plan)  # download, convert or build checkpoints visibly, before any worker starts
    from omnistage.logs import setup_logging
    setup_logging(args.log_level, args.log_format)
    failed: list[BaseException] = []

    def stop(error: BaseException) -> None:  # the stages could not start: stop serving, exit 1
        failed.append(error)
        server.should_exit = True

    # The server answers while the stages load (/health says "loading"); loading has no deadline
    # of its own beyond each worker's start-up timeout.
    app = create_app(plan, api_key=args.api_key, media_dir=args.media_dir, load_in_background=stop)
    server = uvicorn.Server(uvicorn.Config(app, host=args.host, port=args.port, log_level=args.log_level,
                                           log_config=None, access_log=False,
                                           timeout_graceful_shutdown=args.shutdown_timeout))
    server.run()
    if failed:
        print(f"error: {failed[0]}", file=sys.stderr)
        return 1
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


COMMANDS = {"tiny-models": _tiny_models, "models": _models, "validate": _validate, "run": _run, "demo": _demo, "serve": _serve,
            "bench": _bench}

if __name__ == "__main__":
    sys.exit(main())
