"""The client host's program in the multi-host lab: closed-loop HTTP clients that submit a job,
poll it until it is terminal, fetch image 0 and repeat, writing every accepted job and its end
as JSON lines. It runs on the client host as `python -m bench.multihost client ...` (see
`Cluster.client_argv`); `client_args` builds that command's load arguments."""

from __future__ import annotations

import argparse
import json
import threading
import time
from pathlib import Path
from typing import Any

from bench.multihost_cluster import TERMINAL
from jobs.schema import Sampler


def client_args(jobs: int, clients: int, steps: int, size: int, first: int) -> list[str]:
    return ["--jobs", str(jobs), "--clients", str(clients), "--steps", str(steps),
            "--size", str(size), "--first-index", str(first)]  # fmt: skip


def client_main(args: argparse.Namespace) -> int:
    """Closed-loop clients: each submits, polls until terminal, fetches image 0, repeats."""
    import httpx

    from bench.closed_loop import PNG_MAGIC, Params, poll_delay

    if args.readyz:
        with httpx.Client(base_url=args.url, timeout=10) as client:
            reply = client.get("/readyz")
            print(json.dumps({"code": reply.status_code, "body": reply.json()}))
        return 0
    params = Params(args.size, args.size, args.steps, 3.0, Sampler.ddim.value)
    counter = iter(range(args.first_index, args.first_index + args.jobs))
    lock = threading.Lock()
    out = open(args.out, "a") if args.out else None  # noqa: SIM115 - closed below
    stats: dict[str, Any] = {"succeeded": 0, "failed": 0, "first_submit": None, "last_done": None}
    stop_file = Path(args.stop_file) if args.stop_file else None

    def write(row: dict[str, Any]) -> None:
        if out is not None:
            with lock:
                out.write(json.dumps(row) + "\n")
                out.flush()

    def one(client: httpx.Client, index: int) -> None:
        submitted = time.time()
        with lock:
            if stats["first_submit"] is None:
                stats["first_submit"] = submitted
        reply = client.post("/v1/txt2img", json=params.body(index))
        if reply.status_code != 202:
            write({"event": "refused", "index": index, "code": reply.status_code,
                   "error": f"submit {reply.status_code}"})  # fmt: skip
            with lock:
                stats["failed"] += 1
            time.sleep(0.5)
            return
        view = reply.json()
        job_id = view["id"]
        write({"event": "accepted", "index": index, "id": job_id, "t": submitted})
        while view["status"] not in TERMINAL:
            time.sleep(poll_delay("eta", view))
            answer = client.get(f"/v1/jobs/{job_id}")
            if answer.status_code == 200:
                view = answer.json()
        image_ok = False
        if view["status"] == "succeeded":
            image = client.get(f"/v1/jobs/{job_id}/images/0")
            image_ok = image.status_code == 200 and image.content.startswith(PNG_MAGIC)
        finished = time.time()
        ok = view["status"] == "succeeded" and image_ok
        row = {"event": "done", "index": index, "id": job_id, "status": view["status"],
               "t": finished, "image_ok": image_ok}  # fmt: skip
        if not ok:
            row["error"] = f"{job_id} {view['status']} image_ok={image_ok}"
        write(row)
        with lock:
            stats["succeeded" if ok else "failed"] += 1
            stats["last_done"] = max(stats["last_done"] or 0.0, finished)

    def loop() -> None:
        with httpx.Client(base_url=args.url, timeout=30) as client:
            while not (stop_file and stop_file.exists()):
                with lock:
                    index = next(counter, None)
                if index is None:
                    return
                try:
                    one(client, index)
                except httpx.HTTPError as exc:
                    write({"event": "error", "index": index, "error": repr(exc)})
                    with lock:
                        stats["failed"] += 1
                    time.sleep(0.5)

    threads = [threading.Thread(target=loop, daemon=True) for _ in range(args.clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if out is not None:
        out.close()
    print(json.dumps(stats))
    return 0
