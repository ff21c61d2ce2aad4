"""Upload and download a ~100 MB LoRA adapter through the registry's HTTP API.

Setup: a real uvicorn server (``store.api.server.run_registry_api``) on SQLite and the
filesystem blob store, all under a temp dir; the client is ``RegistryClient``.

* upload: ``POST /v1/adapters`` of a fresh rank-256 fp32 HF PEFT adapter (distinct bytes every
  round so dedup never skips work). End to end: streaming the body, parsing and validating
  the weights, writing the canonical copy, hashing and storing every blob, committing.
* download: ``GET /v1/adapters/{id}/files/...`` of the canonical package, verified by sha256.

Reports MB/s (MB = 10^6 bytes) as the median of ``--rounds`` rounds, prints a table and
writes ``bench/results/store_transfer.json``.

    .venv/bin/python bench/store_transfer.py [--rounds 3] [--layers 3] [--rank 256]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from lorafleet.logging import configure_logging
from store.api.server import run_registry_api
from store.client import RegistryClient
from store.client_download import download_adapter
from store.db import upgrade
from store.formats import SUPPORTED_MODULES, BaseModelSpec, CanonicalAdapter, write_hf_peft
from store.settings import StoreSettings

RESULTS = Path(__file__).resolve().parent / "results" / "store_transfer.json"


def hf_config(layers: int) -> dict:
    """A TinyLlama-sized config (hidden 2048, MLP 5632, GQA 32/4) with ``layers`` layers."""
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": 2048,
        "intermediate_size": 5632,
        "num_hidden_layers": layers,
        "num_attention_heads": 32,
        "num_key_value_heads": 4,
        "vocab_size": 32000,
    }


def make_adapter(spec: BaseModelSpec, rank: int, seed: int) -> CanonicalAdapter:
    """Random fp32 LoRA weights on every supported module of every layer."""
    gen = torch.Generator().manual_seed(seed)
    weights = {}
    for layer in range(spec.num_layers):
        for module, (in_f, out_f) in spec.module_shapes().items():
            a = torch.randn(rank, in_f, generator=gen) * 0.01
            b = torch.randn(out_f, rank, generator=gen) * 0.01
            weights[(layer, module)] = (a, b)
    return CanonicalAdapter(
        source_format="hf_peft",
        rank=rank,
        alpha=float(rank),
        target_modules=sorted(SUPPORTED_MODULES),
        num_layers=spec.num_layers,
        weights=weights,
    )


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--layers", type=int, default=3)
    parser.add_argument("--rank", type=int, default=256)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--log-level", default="WARNING")
    args = parser.parse_args()
    configure_logging(args.log_level)

    config = hf_config(args.layers)
    spec = BaseModelSpec.from_hf_config(config)
    uploads: list[float] = []
    downloads: list[float] = []
    sizes: dict[str, int] = {}
    with tempfile.TemporaryDirectory(prefix="lorafleet-bench-") as tmp_name:
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
            for i in range(args.rounds):
                src = tmp / f"src{i}"
                write_hf_peft(make_adapter(spec, args.rank, seed=i), src)
                sizes["upload_bytes"] = dir_bytes(src)
                start = time.perf_counter()
                entity = client.upload_adapter(
                    src,
                    namespace="bench",
                    name="big",
                    version=f"1.0.{i}",
                    base_model="bench-llama",
                )
                uploads.append(time.perf_counter() - start)
                out = tmp / f"out{i}"
                start = time.perf_counter()
                download_adapter(client, entity["id"], out)
                downloads.append(time.perf_counter() - start)
                sizes["download_bytes"] = dir_bytes(out)
            client.close()

    def mbps(nbytes: int, seconds: list[float]) -> float:
        return nbytes / 1e6 / statistics.median(seconds)

    result = {
        "benchmark": "store_transfer",
        "backend": "sqlite + filesystem blobs, uvicorn over loopback HTTP",
        "adapter": {"rank": args.rank, "layers": args.layers, "dtype": "float32"},
        "rounds": args.rounds,
        "upload_bytes": sizes["upload_bytes"],
        "download_bytes": sizes["download_bytes"],
        "upload_seconds": uploads,
        "download_seconds": downloads,
        "upload_mb_per_s_median": round(mbps(sizes["upload_bytes"], uploads), 1),
        "download_mb_per_s_median": round(mbps(sizes["download_bytes"], downloads), 1),
        "machine": {"platform": platform.platform(), "python": platform.python_version()},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")

    table = Table(title=f"registry HTTP transfer, {args.rounds} rounds (median)")
    table.add_column("direction")
    table.add_column("MB", justify="right")
    table.add_column("median s", justify="right")
    table.add_column("MB/s", justify="right")
    for name, nbytes, secs, rate in (
        ("upload (register)", sizes["upload_bytes"], uploads, result["upload_mb_per_s_median"]),
        ("download", sizes["download_bytes"], downloads, result["download_mb_per_s_median"]),
    ):
        table.add_row(name, f"{nbytes / 1e6:.1f}", f"{statistics.median(secs):.2f}", f"{rate}")
    Console().print(table)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
