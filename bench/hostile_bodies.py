"""Benchmark: peak memory and wall time of one call to a hostile service, per provider and judge.

    python bench/hostile_bodies.py [--mb 256] [--timeout-s 5] [--limit-s 30] [--caps on|off] [--only fal,worker]

Each service's loopback emulator (tests/emulators, run in this process) misbehaves in one way:

- ``huge``: the result image is ``--mb`` MB (for services that answer JSON, a base64 string that long);
- ``huge_json``: every JSON answer is padded to ``--mb`` MB (streamed, no Content-Length);
- ``trickle``: every answer arrives one byte per 0.5 s after the headers (each read is quick, the body never ends).

One call per case is made in a fresh child process, through the same service chain the runner
uses (one attempt, ``timeout_s = --timeout-s``), so ``ru_maxrss`` is that call's peak alone.
The child is killed after ``--limit-s`` (shown as "killed"). ``--caps off`` raises the body caps
to 1 TB, to show what they save. Nothing outside the repository is read; figures are printed only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.emulators import Emulator, cloudflare, comfyui, gemini, leonardo, ollama, openai, runware, worker  # noqa: E402
from tests.emulators.fal import KEY as FAL_KEY  # noqa: E402
from tests.emulators.fal import FalEmulator  # noqa: E402

CASES = ("huge", "huge_json", "trickle")


@dataclass(frozen=True)
class Service:
    kind: str  # providers | judges
    name: str
    emulator: Callable[[], Emulator]
    env: Callable[[Emulator], dict[str, str]]
    cases: tuple[str, ...] = CASES


SERVICES = [
    Service("providers", "fal", FalEmulator, lambda e: {"FAL_KEY": FAL_KEY, "FAL_BASE_URL": e.url}),
    Service("providers", "cloudflare", cloudflare.CloudflareEmulator, lambda e: {
        "CLOUDFLARE_API_TOKEN": cloudflare.TOKEN, "CLOUDFLARE_ACCOUNT_ID": cloudflare.ACCOUNT, "CLOUDFLARE_BASE_URL": e.url}),
    Service("providers", "gemini", gemini.GeminiEmulator, lambda e: {"GEMINI_API_KEY": gemini.KEY, "GEMINI_BASE_URL": e.url}),
    Service("providers", "openai", openai.OpenAIEmulator, lambda e: {"OPENAI_API_KEY": openai.KEY, "OPENAI_BASE_URL": f"{e.url}/v1"}),
    Service("providers", "leonardo", leonardo.LeonardoEmulator, lambda e: {
        "LEONARDO_API_KEY": leonardo.KEY, "LEONARDO_BASE_URL": f"{e.url}/api/rest/v1"}),
    Service("providers", "runware", runware.RunwareEmulator, lambda e: {"RUNWARE_API_KEY": runware.KEY, "RUNWARE_BASE_URL": f"{e.url}/v1"}),
    Service("providers", "comfyui", comfyui.ComfyUIEmulator, lambda e: {"COMFYUI_URL": e.url}),
    Service("providers", "worker", worker.WorkerEmulator, lambda e: {
        "WORKER_URL": f"{e.url}/generate", "WORKER_TOKEN": worker.TOKEN, "WORKER_METHOD": "POST"}, ("huge", "trickle")),
    Service("judges", "openai", openai.OpenAIEmulator, lambda e: {"OPENAI_API_KEY": openai.KEY, "OPENAI_BASE_URL": f"{e.url}/v1"},
            ("huge_json", "trickle")),
    Service("judges", "gemini", gemini.GeminiEmulator, lambda e: {"GEMINI_API_KEY": gemini.KEY, "GEMINI_BASE_URL": e.url},
            ("huge_json", "trickle")),
    Service("judges", "ollama", ollama.OllamaEmulator, lambda e: {"OLLAMA_HOST": e.url}, ("huge_json", "trickle")),
]


def config_text(service: Service, timeout_s: float, caps: bool) -> str:
    """The child's configuration: one attempt, a short timeout, fast polling, caps on or raised out of the way."""
    cap = "" if caps else "[network]\nmax_image_bytes = 1_000_000_000_000\nmax_json_bytes = 1_000_000_000_000\n"
    return (f"[resilience.retry]\nmax_attempts = 1\n{cap}"
            f"[{service.kind}.{service.name}]\ntimeout_s = {timeout_s}\npoll_initial_s = 0.01\npoll_max_s = 0.05\n")


# ---- the child: one call, then its own figures on stdout ---------------------------------------------
def child(kind: str, name: str) -> None:
    from pipeline import registry
    from pipeline.components import GenerationRequest
    from pipeline.config import Settings
    from pipeline.errors import ProviderError
    from pipeline.resilience.routing import Attempt, ServiceChain, member_for

    settings = Settings.from_env()
    component = getattr(registry, kind).create(name, settings)
    chain = ServiceChain(kind, [member_for(settings, component)])

    async def send(c):  # type: ignore[no-untyped-def]
        if kind == "providers":
            result = await c.generate(GenerationRequest(prompt="a red fox in the snow", width=1024, height=768, seed=7, prompt_id="p1"))
            return f"{len(result.data):,} bytes"
        made = await c.decompose("a red fox in the snow")
        return f"{len(made.elements)} elements"

    attempts: list[Attempt] = []
    before_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print("ready", flush=True)  # the parent's time limit starts now, not at start-up (imports take seconds on a busy machine)
    t0 = time.perf_counter()
    try:
        outcome = "ok: " + asyncio.run(chain.call(send, attempts.append)).value
    except ProviderError as e:
        last = attempts[-1].error if attempts and attempts[-1].error else e
        outcome = f"{last.kind}: {last}"
    except Exception as e:  # noqa: BLE001 (the bench reports whatever happened)
        outcome = f"crash: {type(e).__name__}: {e}"
    wall = time.perf_counter() - t0
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"outcome": outcome, "wall_s": wall, "peak_mb": peak_kb / 1024, "start_mb": before_kb / 1024}))


# ---- the parent: emulators, one child per case, the table -------------------------------------------
def measure(service: Service, emulator: Emulator, case: str, args: argparse.Namespace, workdir: Path) -> dict[str, object]:
    config = workdir / f"{service.kind}-{service.name}-{case}.toml"
    config.write_text(config_text(service, args.timeout_s, args.caps == "on"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("DARKROOM_")}
    env.update(service.env(emulator), DARKROOM_CONFIG=str(config), DARKROOM_DATA_DIR=str(workdir / "data"), PYTHONPATH=str(ROOT))
    emulator.fault = case
    child_process = subprocess.Popen([sys.executable, __file__, "--child", service.kind, service.name], env=env, text=True,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        assert child_process.stdout is not None
        ready = child_process.stdout.readline()  # the call starts
        t0 = time.perf_counter()
        try:
            out, _ = child_process.communicate(timeout=args.limit_s)
        except subprocess.TimeoutExpired:
            child_process.kill()
            child_process.communicate()
            return {"outcome": f"killed: still running after {args.limit_s:g} s", "wall_s": time.perf_counter() - t0, "peak_mb": None}
    finally:
        emulator.fault = "ok"
    lines = [line for line in out.splitlines() if line.startswith("{")]
    if not ready.startswith("ready") or not lines:
        return {"outcome": f"child failed (exit {child_process.returncode})", "wall_s": None, "peak_mb": None}
    return json.loads(lines[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", type=int, default=256, help="size of the huge bodies, MB (default 256)")
    parser.add_argument("--timeout-s", type=float, default=5.0, help="timeout_s of each service (default 5)")
    parser.add_argument("--limit-s", type=float, default=30.0, help="kill a call still running after this long (default 30)")
    parser.add_argument("--caps", choices=("on", "off"), default="on", help="off: raise the body caps to 1 TB")
    parser.add_argument("--only", default="", help="comma-separated service names (default: all)")
    parser.add_argument("--child", nargs=2, metavar=("KIND", "NAME"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    only = {s for s in args.only.split(",") if s}
    print(f"hostile bodies: {args.mb} MB bodies, trickle 1 byte / 0.5 s, timeout_s = {args.timeout_s:g}, caps {args.caps}, "
          f"one attempt, killed after {args.limit_s:g} s")
    print(f"{'service':<20} {'case':<10} {'wall s':>8} {'peak RSS MB':>12}  outcome")
    with tempfile.TemporaryDirectory(prefix="darkroom-bench-") as tmp:
        for service in SERVICES:
            if only and service.name not in only:
                continue
            emulator = service.emulator().start()
            emulator.huge_bytes = args.mb * 1_000_000
            try:
                for case in service.cases:
                    row = measure(service, emulator, case, args, Path(tmp))
                    wall = f"{row['wall_s']:.1f}" if row.get("wall_s") is not None else "-"
                    peak = f"{row['peak_mb']:.0f}" if row.get("peak_mb") is not None else "-"
                    outcome = str(row["outcome"])
                    print(f"{service.kind[:-1] + ' ' + service.name:<20} {case:<10} {wall:>8} {peak:>12}  "
                          f"{outcome[:110] + ('…' if len(outcome) > 110 else '')}", flush=True)
            finally:
                emulator.stop()


if __name__ == "__main__":
    main()
