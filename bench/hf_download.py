"""Download a ~100 MB LoRA adapter through the Hugging Face–compatible API (``/v1/hf``, the
stock ``huggingface_hub.hf_hub_download``) and through the native route
(``GET /v1/adapters/{id}/files/...`` with ``store.client_download.download_adapter``).

Setup: a real uvicorn server (``store.api.server.run_registry_api``) on SQLite and the
filesystem blob store under a temp dir; one rank-256 fp32 HF PEFT adapter (TinyLlama
widths, 3 layers, as ``bench/store_transfer.py``). Each round downloads every canonical file
both ways into fresh directories (the Hub client into an empty cache, so nothing is reused),
alternating which goes first; both verify the sha256 (the Hub client against the ``ETag``).

Reports MB/s (MB = 10^6 bytes) as the median of ``--rounds`` rounds and the ratio
``/v1/hf`` / native, prints a table and writes ``bench/results/hf_download.json``.

    .venv/bin/python bench/hf_download.py [--rounds 5] [--layers 3] [--rank 256]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import huggingface_hub  # noqa: E402
from huggingface_hub import hf_hub_download  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402
from store_transfer import dir_bytes, hf_config, make_adapter  # noqa: E402

from lorafleet.logging import configure_logging  # noqa: E402
from store.api.server import run_registry_api  # noqa: E402
from store.client import RegistryClient  # noqa: E402
from store.client_download import download_adapter  # noqa: E402
from store.db import upgrade  # noqa: E402
from store.formats import BaseModelSpec, write_hf_peft  # noqa: E402
from store.settings import StoreSettings  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "hf_download.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--layers", type=int, default=3)
    parser.add_argument("--rank", type=int, default=256)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--log-level", default="WARNING")
    args = parser.parse_args()
    configure_logging(args.log_level)

    config = hf_config(args.layers)
    spec = BaseModelSpec.from_hf_config(config)
    seconds: dict[str, list[float]] = {"hf": [], "native": []}
    with tempfile.TemporaryDirectory(prefix="lorafleet-bench-hf-") as tmp_name:
        tmp = Path(tmp_name)
        db_url = f"sqlite:///{tmp / 'registry.db'}"
        upgrade(db_url)
        settings = StoreSettings(
            home=tmp / "home", database_url=db_url, blob_url=f"file://{tmp / 'blobs'}"
        )
        with run_registry_api(settings) as (base_url, token):
            client = RegistryClient(base_url, token, timeout=600)
            client.register_base_model("bench-llama", config)
            client.create_namespace("bench", approval_policy="auto")
            src = tmp / "src"
            write_hf_peft(make_adapter(spec, args.rank, seed=0), src)
            entity = client.upload_adapter(
                src, namespace="bench", name="big", version="1.0.0", base_model="bench-llama"
            )
            files = [f["path"] for f in entity["files"] if f["role"] == "canonical"]
            nbytes = sum(f["size"] for f in entity["files"] if f["role"] == "canonical")

            def via_hf(i: int) -> None:
                for path in files:
                    hf_hub_download(
                        "bench/big",
                        path,
                        revision="1.0.0",
                        endpoint=f"{base_url}/v1/hf",
                        token=token,
                        cache_dir=tmp / f"hf-cache-{i}",
                    )

            def via_native(i: int) -> None:
                download_adapter(client, entity["id"], tmp / f"native-{i}")

            for i in range(args.rounds):
                order = [("hf", via_hf), ("native", via_native)]
                for name, run in order if i % 2 == 0 else order[::-1]:
                    start = time.perf_counter()
                    run(i)
                    seconds[name].append(time.perf_counter() - start)
                assert dir_bytes(tmp / f"native-{i}") == nbytes
            client.close()

    rate = {k: nbytes / 1e6 / statistics.median(v) for k, v in seconds.items()}
    result = {
        "benchmark": "hf_download",
        "backend": "sqlite + filesystem blobs, uvicorn over loopback HTTP",
        "adapter": {"rank": args.rank, "layers": args.layers, "dtype": "float32"},
        "files": files,
        "bytes": nbytes,
        "rounds": args.rounds,
        "huggingface_hub": huggingface_hub.__version__,
        "hf_seconds": seconds["hf"],
        "native_seconds": seconds["native"],
        "hf_mb_per_s_median": round(rate["hf"], 1),
        "native_mb_per_s_median": round(rate["native"], 1),
        "hf_over_native": round(rate["hf"] / rate["native"], 2),
        "machine": {"platform": platform.platform(), "python": platform.python_version()},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")

    table = Table(title=f"download of a {nbytes / 1e6:.0f} MB adapter, {args.rounds} rounds")
    table.add_column("route")
    table.add_column("median s", justify="right")
    table.add_column("MB/s", justify="right")
    table.add_row(
        "/v1/hf (hf_hub_download)",
        f"{statistics.median(seconds['hf']):.2f}",
        f"{result['hf_mb_per_s_median']}",
    )
    table.add_row(
        "native (download_adapter)",
        f"{statistics.median(seconds['native']):.2f}",
        f"{result['native_mb_per_s_median']}",
    )
    Console().print(table)
    print(f"/v1/hf / native: {result['hf_over_native']}x; wrote {args.out}")


if __name__ == "__main__":
    main()
