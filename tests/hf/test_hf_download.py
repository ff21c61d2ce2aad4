"""Downloads through ``/v1/hf`` with the real ``huggingface_hub`` (and its ``hf`` CLI, and
``peft``), on SQLite and PostgreSQL: by version and by ``main``, snapshots, tree listings,
the Hub's error codes, a wrong tenant, byte ranges."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
from huggingface_hub import HfApi, hf_hub_download, snapshot_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from support.hf_hub import Published, hf_endpoint, hf_env
from support.live_api import LiveRegistry


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def api(reg: LiveRegistry, token: str | None = None) -> HfApi:
    return HfApi(endpoint=hf_endpoint(reg), token=token or reg.admin_token)


def test_hf_hub_download_by_version_and_by_main(
    hf_registry: LiveRegistry, bot: Published, tmp_path: Path
) -> None:
    for revision, version in (("1.0.0", "1.0.0"), ("main", "1.1.0")):
        want = bot.shown(hf_registry, version)
        for name in ("adapter_config.json", "adapter_model.safetensors"):
            got = hf_hub_download(
                bot.repo_id,
                name,
                revision=revision,
                endpoint=hf_endpoint(hf_registry),
                token=hf_registry.admin_token,
                cache_dir=tmp_path / "cache",
            )
            assert sha256(got) == want[name]["sha256"], (revision, name)
    info_main = api(hf_registry).model_info(bot.repo_id)
    info_11 = api(hf_registry).model_info(bot.repo_id, revision="1.1.0")
    info_10 = api(hf_registry).model_info(bot.repo_id, revision="1.0.0")
    assert info_main.sha == info_11.sha != info_10.sha
    assert len(info_10.sha) == 40 and info_10.sha == info_10.sha.lower()
    assert info_main.id == bot.repo_id
    assert info_main.last_modified is not None
    siblings = {s.rfilename: s.size for s in info_10.siblings}
    assert siblings == {p: f["size"] for p, f in bot.shown(hf_registry, "1.0.0").items()}
    # A commit id is a revision too, and stays the same on every ask.
    config = hf_hub_download(
        bot.repo_id,
        "adapter_config.json",
        revision="1.0.0",
        endpoint=hf_endpoint(hf_registry),
        token=hf_registry.admin_token,
        cache_dir=tmp_path / "cache",
    )
    # What vLLM's resolvers compare with its --model: the registry's base model name.
    assert json.loads(Path(config).read_text())["base_model_name_or_path"] == "tiny"
    by_sha = api(hf_registry).model_info(bot.repo_id, revision=info_10.sha)
    assert by_sha.sha == info_10.sha
    assert by_sha.siblings[0].lfs is not None


def test_snapshot_and_tree_listing(
    hf_registry: LiveRegistry, bot: Published, tmp_path: Path
) -> None:
    folder = snapshot_download(
        bot.repo_id,
        revision="1.0.0",
        endpoint=hf_endpoint(hf_registry),
        token=hf_registry.admin_token,
        cache_dir=tmp_path / "cache",
    )
    want = bot.shown(hf_registry, "1.0.0")
    got = {p.name: sha256(p) for p in Path(folder).iterdir() if p.is_file()}
    assert got == {path: f["sha256"] for path, f in want.items()}
    files = api(hf_registry).list_repo_files(bot.repo_id, revision="1.0.0")
    assert sorted(files) == sorted(want)
    tree = list(api(hf_registry).list_repo_tree(bot.repo_id, revision="1.0.0", recursive=True))
    assert {t.path: (t.size, t.lfs.sha256) for t in tree} == {
        p: (f["size"], f["sha256"]) for p, f in want.items()
    }
    local = tmp_path / "local"
    snapshot_download(
        bot.repo_id,
        endpoint=hf_endpoint(hf_registry),
        token=hf_registry.admin_token,
        local_dir=local,
    )
    main = bot.shown(hf_registry, "1.1.0")
    assert {p: sha256(local / p) for p in main} == {p: f["sha256"] for p, f in main.items()}


def test_resolve_headers_and_byte_ranges(hf_registry: LiveRegistry, bot: Published) -> None:
    weights = bot.canonical("1.0.0")["adapter_model.safetensors"]
    url = f"/v1/hf/{bot.repo_id}/resolve/1.0.0/adapter_model.safetensors"
    with hf_registry.http(hf_registry.admin_token) as http:
        head = http.head(url)
        whole = http.get(url)
        part = http.get(url, headers={"Range": "bytes=10-19"})
        tail = http.get(url, headers={"Range": "bytes=-5"})
        beyond = http.get(url, headers={"Range": f"bytes={weights['size']}-"})
    assert head.status_code == 200
    assert head.headers["etag"] == f'"{weights["sha256"]}"'
    assert head.headers["content-length"] == str(weights["size"])
    assert len(head.headers["x-repo-commit"]) == 40
    assert hashlib.sha256(whole.content).hexdigest() == weights["sha256"]
    assert part.status_code == 206 and part.content == whole.content[10:20]
    assert part.headers["content-range"] == f"bytes 10-19/{weights['size']}"
    assert tail.status_code == 206 and tail.content == whole.content[-5:]
    assert beyond.status_code == 416
    for response in (head, whole, part, tail, beyond):
        assert not [h for h in response.headers if h.lower().startswith("x-xet")]


def test_missing_things_answer_the_hubs_error_codes(
    hf_registry: LiveRegistry, bot: Published, tmp_path: Path
) -> None:
    kwargs = {"endpoint": hf_endpoint(hf_registry), "cache_dir": tmp_path / "c"}
    token = hf_registry.mint("reader", "acme", "hf-reader")
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("acme/nothing", "adapter_config.json", token=token, **kwargs)
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download(bot.repo_id, "adapter_config.json", revision="9.9.9", token=token, **kwargs)
    with pytest.raises(EntryNotFoundError):
        hf_hub_download(bot.repo_id, "nope.bin", revision="1.0.0", token=token, **kwargs)
    with pytest.raises(RevisionNotFoundError):
        api(hf_registry, token).model_info(bot.repo_id, revision="refs-pr-1")
    # To a writer of the namespace a repo without versions is empty, not absent: it may
    # create it by committing a version (what `hf upload --revision` checks first).
    with pytest.raises(RevisionNotFoundError):
        api(hf_registry).model_info("acme/nothing", revision="1.0.0")
    with hf_registry.http(token) as http:
        missing = http.get("/v1/hf/api/models/acme/nothing")
    assert missing.status_code == 404
    assert missing.headers["x-error-code"] == "RepoNotFound"
    assert missing.json() == {"error": "repository acme/nothing not found"}
    with hf_registry.http(None) as anonymous:
        assert anonymous.get(f"/v1/hf/api/models/{bot.repo_id}").status_code == 401


def test_another_tenants_repo_is_the_missing_ones_answer(
    hf_registry: LiveRegistry, bot: Published, tmp_path: Path
) -> None:
    stranger = hf_registry.mint("reader", "other", "hf-stranger")
    urls = [
        "/v1/hf/api/models/{repo}",
        "/v1/hf/api/models/{repo}/revision/1.0.0",
        "/v1/hf/api/models/{repo}/tree/main",
        "/v1/hf/{repo}/resolve/1.0.0/adapter_config.json",
    ]
    with hf_registry.http(stranger) as http:
        for url in urls:
            theirs = http.get(url.format(repo=bot.repo_id))
            missing = http.get(url.format(repo="acme/never-was"))
            assert theirs.status_code == missing.status_code == 404, url
            assert theirs.headers["x-error-code"] == missing.headers["x-error-code"]
            assert theirs.text.replace("bot", "never-was") == missing.text
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download(
            bot.repo_id,
            "adapter_config.json",
            endpoint=hf_endpoint(hf_registry),
            token=stranger,
            cache_dir=tmp_path / "c",
        )


def test_hf_download_cli(hf_registry: LiveRegistry, bot: Published, tmp_path: Path) -> None:
    hf = Path(sys.executable).with_name("hf")
    dest = tmp_path / "out"
    done = subprocess.run(
        [str(hf), "download", bot.repo_id, "--revision", "1.0.0", "--local-dir", str(dest)],
        env=hf_env(hf_registry, tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    want = bot.shown(hf_registry, "1.0.0")
    assert {p: sha256(dest / p) for p in want} == {p: f["sha256"] for p, f in want.items()}


PEFT_LOAD = """
import json, sys, torch
from peft import PeftModel
from transformers import LlamaConfig, LlamaForCausalLM
config = LlamaConfig(**json.loads(sys.argv[1]))
torch.manual_seed(0)
base = LlamaForCausalLM(config)
model = PeftModel.from_pretrained(base, sys.argv[2], revision=sys.argv[3])
state = {k: v for k, v in model.state_dict().items() if "lora_" in k}
key = sorted(state)[0]
print(json.dumps({"n": len(state), "key": key, "sum": float(state[key].double().sum())}))
"""


def test_peft_loads_an_adapter_straight_from_lorafleet(
    hf_registry: LiveRegistry, bot: Published, tmp_path: Path
) -> None:
    from safetensors.torch import load_file
    from support.tiny import tiny_hf_config

    done = subprocess.run(
        [sys.executable, "-c", PEFT_LOAD, json.dumps(tiny_hf_config()), bot.repo_id, "1.0.0"],
        env=hf_env(hf_registry, tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    loaded = json.loads(done.stdout.strip().splitlines()[-1])
    weights = load_file(str(bot.sources["1.0.0"] / "adapter_model.safetensors"))
    assert loaded["n"] == len(weights)
    # PEFT names the loaded tensor "...lora_A.default.weight"; the file "...lora_A.weight".
    stored = next(
        v
        for k, v in weights.items()
        if loaded["key"].endswith(
            k.removeprefix("base_model.model.").replace(".weight", ".default.weight")
        )
    )
    assert loaded["sum"] == pytest.approx(float(stored.double().sum()), rel=1e-6)
