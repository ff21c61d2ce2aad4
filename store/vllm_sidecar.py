"""``lorafleet pull --vllm-url``: keep a stock vLLM's runtime LoRA set equal to the pulled
directory.

vLLM started with ``--enable-lora`` and ``VLLM_ALLOW_RUNTIME_LORA_UPDATING=true`` loads and
unloads adapters over HTTP (``POST /v1/load_lora_adapter {lora_name, lora_path}``,
``POST /v1/unload_lora_adapter {lora_name}``). ``VllmTarget`` is the ``ServingTarget`` that
``store.pull`` drives:

* ``prepare``: a new directory's ``adapter_config.json`` gets ``base_model_name_or_path`` =
  vLLM's ``--model`` value before it goes into place, so vLLM's filesystem resolver
  (``VLLM_LORA_RESOLVER_CACHE_DIR`` = the pull directory) accepts it too;
* ``release``: before a directory is deleted its adapter is unloaded (under both names it
  may be served by: its coordinates, and its directory name, which the filesystem resolver
  uses); the deletion waits until vLLM confirmed (200, or 404: it was not loaded). vLLM unreachable or answering
  anything else raises ``VllmUnavailable``, so the directory stays and the pull retries;
* ``sync``: after each reconciliation every pulled adapter vLLM does not list in
  ``GET /v1/models`` is loaded. vLLM's "has already been loaded" (a race with another
  loader) counts as loaded; an adapter vLLM refuses (a rank over its ``--max-lora-rank``,
  say) is reported in ``refused`` and tried again on the next sync, never deleted.

A version is loaded under its coordinates, ``namespace/name@version`` (``lora_name``
``acme/bot@1.2.0``), which is the model name clients send. vLLM restarted (it forgets
runtime adapters) is caught up by the next sync.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import httpx
import structlog

from store.client_download import FILE_MODE
from store.pull_state import read_state

log = structlog.get_logger(__name__)

# vLLM's messages: a duplicate load (400), an unload of a name it does not hold (404).
ALREADY_LOADED = "has already been loaded"
NOT_LOADED = "cannot be found"


class VllmUnavailable(Exception):
    """vLLM could not be reached or did not confirm a change: nothing was deleted."""


class VllmTarget:
    """The vLLM server at ``url`` serving base model ``model`` (its ``--model`` value).

    ``api_key``: vLLM's ``--api-key``, sent as a bearer token. ``refused`` holds, after each
    ``sync``, the adapters vLLM refused to load (``lora_name`` -> its message); ``loaded``
    and ``unloaded`` what the last sync and releases changed. ``report`` is called with one
    line per change (and per refusal, once until its message changes)."""

    def __init__(
        self,
        url: str,
        model: str,
        *,
        api_key: str | None = None,
        timeout: float = 60.0,
        transport: httpx.BaseTransport | None = None,
        report: Callable[[str], None] | None = None,
    ) -> None:
        if not model:
            raise ValueError("the vLLM --model value is required (base_model_name_or_path)")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.url = url.rstrip("/")
        self.model = model
        self.http = httpx.Client(
            base_url=self.url, headers=headers, timeout=timeout, transport=transport
        )
        self.refused: dict[str, str] = {}
        self.loaded: list[str] = []
        self.unloaded: list[str] = []
        self.report = report or (lambda _line: None)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> VllmTarget:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # --- the ServingTarget protocol (store.pull) -----------------------------------------

    def prepare(self, directory: Path) -> None:
        """Set ``base_model_name_or_path`` in ``directory/adapter_config.json`` to vLLM's
        ``--model`` value (atomic replace; the file stays 0644)."""
        path = Path(directory) / "adapter_config.json"
        config = json.loads(path.read_text())
        if config.get("base_model_name_or_path") == self.model:
            return
        config["base_model_name_or_path"] = self.model
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".adapter_config.")
        os.fchmod(fd, FILE_MODE)
        with os.fdopen(fd, "w") as fh:
            json.dump(config, fh, indent=2, sort_keys=True)
        os.replace(tmp, path)

    def release(self, dirname: str, adapter: str | None) -> None:
        """Unload ``adapter`` (its coordinates) from vLLM, and ``dirname`` (the name vLLM's
        filesystem resolver loads the directory under); return only once vLLM confirmed it
        serves neither. Raises ``VllmUnavailable`` otherwise (keep the directory)."""
        for name in (adapter, dirname):
            if name is None:
                continue
            response = self._post("/v1/unload_lora_adapter", {"lora_name": name})
            message = _message(response)
            if response.status_code == 200:
                self.unloaded.append(name)
                self.report(f"< {name} unloaded from vLLM")
                log.info("vllm_adapter_unloaded", adapter=name, dir=dirname)
            elif not (response.status_code == 404 and NOT_LOADED in message):
                # (vLLM's own 404 says it never held it: nothing to wait for.)
                raise VllmUnavailable(
                    f"vLLM at {self.url} did not unload {name}: {response.status_code} "
                    f"{message}{_hint(response)}"
                )

    def sync(self, dest: Path) -> None:
        """Load every adapter pulled into ``dest`` that vLLM does not list yet (and give
        directories pulled before, without ``--vllm-model``, the base model field)."""
        self.loaded, refused_before, self.refused = [], self.refused, {}
        served = self.served()
        for dirname, entry in sorted(read_state(Path(dest)).items()):
            adapter = entry["adapter"]
            if (Path(dest) / dirname / "adapter_config.json").is_file():
                self.prepare(Path(dest) / dirname)
            if adapter in served:
                continue
            path = str(Path(dest).resolve() / dirname)
            response = self._post(
                "/v1/load_lora_adapter", {"lora_name": adapter, "lora_path": path}
            )
            message = _message(response)
            if response.status_code == 200 or ALREADY_LOADED in message:
                self.loaded.append(adapter)
                self.report(f"> {adapter} loaded into vLLM")
                log.info("vllm_adapter_loaded", adapter=adapter, dir=path)
            elif _hint(response):
                raise VllmUnavailable(f"vLLM at {self.url}: {message}{_hint(response)}")
            else:
                self.refused[adapter] = f"{response.status_code} {message}"
                if refused_before.get(adapter) != self.refused[adapter]:
                    self.report(f"! vLLM refused {adapter}: {self.refused[adapter]}")
                log.warning("vllm_adapter_refused", adapter=adapter, reason=message)

    # --- vLLM's API ------------------------------------------------------------------------

    def served(self) -> set[str]:
        """The LoRA adapters vLLM serves now (``GET /v1/models`` entries with a parent)."""
        try:
            response = self.http.get("/v1/models")
        except httpx.HTTPError as exc:
            raise VllmUnavailable(f"vLLM at {self.url} is unreachable: {exc}") from None
        if response.status_code != 200:
            raise VllmUnavailable(
                f"vLLM at {self.url}: GET /v1/models {response.status_code} {_message(response)}"
            )
        return {card["id"] for card in response.json().get("data", []) if card.get("parent")}

    def _post(self, path: str, body: dict[str, str]) -> httpx.Response:
        try:
            return self.http.post(path, json=body)
        except httpx.HTTPError as exc:
            raise VllmUnavailable(f"vLLM at {self.url} is unreachable: {exc}") from None


def _message(response: httpx.Response) -> str:
    """vLLM's error message (``{"error": {"message": ...}}``), else the body, cut short."""
    try:
        body = response.json()
    except ValueError:
        return response.text[:300]
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        return error["message"][:300]
    return str(body)[:300]


def _hint(response: httpx.Response) -> str:
    """What to fix when vLLM has no runtime LoRA routes (FastAPI's bare 404/405)."""
    if response.status_code in (404, 405) and "error" not in response.text:
        return (
            " (no runtime LoRA API: start vLLM with --enable-lora and "
            "VLLM_ALLOW_RUNTIME_LORA_UPDATING=true)"
        )
    return ""
