"""``RegistryClient``: the HTTP client of the registry API, used by engines, the CLI and tests.

Every non-2xx answer becomes ``ApiError(status, code, message)`` carrying the API's error
code. Uploads stream files from disk (httpx reads them in chunks) and leave out HF Trainer
state unless asked (``upload_files``). Downloads, their staging and file modes live in
``store.client_download``.
"""

from __future__ import annotations

import fnmatch
import json
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import IO, Any
from urllib.parse import quote

import httpx

Progress = Callable[[int], None]  # called with the number of bytes just transferred

# What an HF Trainer checkpoint holds besides the adapter: resuming state, never served.
# Left out of an upload unless an ``include`` pattern names it.
TRAINER_STATE_FILES = (
    "optimizer.pt",
    "optimizer.bin",
    "scheduler.pt",
    "scaler.pt",
    "rng_state.pth",
    "rng_state_*.pth",
    "training_args.bin",
    "trainer_state.json",
)
TOKEN_HINT = "give a valid token with LORAFLEET_TOKEN or --token"


class ApiError(Exception):
    """An error answer from the registry API (or a transport failure, status 0)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message


class _CountingReader:
    """A read-only file wrapper that reports how many bytes were read (for progress bars)."""

    def __init__(self, fh: IO[bytes], progress: Progress) -> None:
        self._fh = fh
        self._progress = progress

    def read(self, size: int = -1) -> bytes:
        data = self._fh.read(size)
        if data:
            self._progress(len(data))
        return data

    def __getattr__(self, name: str) -> Any:  # seek/tell/fileno for httpx's length probing
        return getattr(self._fh, name)


def adapter_files(source_dir: Path) -> list[tuple[str, Path]]:
    """Every regular file under ``source_dir`` as (relative POSIX path, absolute path), sorted."""
    source_dir = Path(source_dir)
    if not source_dir.is_dir():
        raise ApiError(0, "not_a_directory", f"{source_dir} is not a directory")
    return [
        (PurePosixPath(p.relative_to(source_dir).as_posix()).as_posix(), p)
        for p in sorted(source_dir.rglob("*"))
        if p.is_file()
    ]


def _matches(rel: str, patterns: Sequence[str]) -> bool:
    """A pattern with a ``/`` matches the relative path, one without it the file name."""
    name = PurePosixPath(rel).name
    return any(fnmatch.fnmatchcase(rel if "/" in p else name, p) for p in patterns)


def upload_files(
    source_dir: Path, *, include: Sequence[str] = (), exclude: Sequence[str] = ()
) -> tuple[list[tuple[str, Path]], list[str]]:
    """The files of ``source_dir`` an upload sends, and the trainer-state files it leaves out.

    A file is sent when an ``include`` glob matches it; otherwise unless an ``exclude`` glob
    matches it or it is trainer state (``TRAINER_STATE_FILES``: optimizer, scheduler, RNG
    state, training arguments). A glob with a ``/`` matches the relative path, one without
    it the file name. ``ApiError("no_files")`` when nothing is left to send."""
    chosen: list[tuple[str, Path]] = []
    left_out: list[str] = []
    for rel, path in adapter_files(source_dir):
        if _matches(rel, include):
            chosen.append((rel, path))
        elif _matches(rel, TRAINER_STATE_FILES):
            left_out.append(rel)
        elif not _matches(rel, exclude):
            chosen.append((rel, path))
    if not chosen:
        raise ApiError(
            0, "no_files", f"no files to upload in {source_dir}: every file was left out"
        )
    return chosen, left_out


class RegistryClient:
    """A thin, typed client of the registry's REST API (``/v1``)."""

    def __init__(self, base_url: str, token: str | None = None, timeout: float = 30.0) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.base_url = base_url.rstrip("/")
        self._http = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout)

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def __enter__(self) -> RegistryClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- plumbing ------------------------------------------------------------------------

    @staticmethod
    def _raise_for(response: httpx.Response) -> None:
        if response.is_success:
            return
        try:
            err = response.json()["error"]
            code, message = str(err["code"]), str(err["message"])
        except (ValueError, KeyError, TypeError):
            code, message = "http_error", response.text[:500] or response.reason_phrase
        if response.status_code == 401:
            message = f"{message.rstrip('.')}: {TOKEN_HINT}"
        raise ApiError(response.status_code, code, message)

    def _unreachable(self, exc: httpx.TransportError) -> ApiError:
        return ApiError(
            0,
            "unreachable",
            f"cannot reach the registry API at {self.base_url} ({exc or type(exc).__name__}): "
            "check that it is up (lorafleet api, or lorafleet up) and that --url / "
            "LORAFLEET_API_URL names it",
        )

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        """Send one request and return its decoded JSON (None for an empty body)."""
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from exc
        self._raise_for(response)
        return response.json() if response.content else None

    @contextmanager
    def stream(self, method: str, path: str, **kwargs: Any) -> Iterator[httpx.Response]:
        """The answer to one request, its body not yet read; ``ApiError`` for a non-2xx
        answer and when the API cannot be reached, before or while the body streams."""
        try:
            with self._http.stream(method, path, **kwargs) as response:
                if not response.is_success:
                    response.read()
                    self._raise_for(response)
                yield response
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from exc

    # --- namespaces, base models, tokens ----------------------------------------------------

    def create_namespace(self, name: str, **fields: Any) -> dict:
        """Create a namespace (admin); fields: approval_policy, max_bytes, max_versions, ..."""
        return self.request("POST", "/v1/namespaces", json={"name": name, **fields})

    def list_namespaces(self) -> dict:
        return self.request("GET", "/v1/namespaces")

    def get_namespace(self, name: str) -> dict:
        return self.request("GET", f"/v1/namespaces/{quote(name)}")

    def update_namespace(self, name: str, **changes: Any) -> dict:
        return self.request("PATCH", f"/v1/namespaces/{quote(name)}", json=changes)

    def register_base_model(self, name: str, config: dict) -> dict:
        """Register a base model from its HF ``config.json`` (admin)."""
        return self.request("POST", "/v1/base-models", json={"name": name, "config": config})

    def list_base_models(self) -> dict:
        return self.request("GET", "/v1/base-models")

    def get_base_model(self, name: str) -> dict:
        return self.request("GET", f"/v1/base-models/{quote(name, safe='')}")

    def create_token(
        self, role: str, namespace: str | None, name: str, *, expires_at: str | None = None
    ) -> str:
        """Mint a bearer token; returns its plaintext (shown only once). ``expires_at``:
        RFC 3339 with a timezone, or None for a token that never expires."""
        body = {"role": role, "namespace": namespace, "name": name}
        if expires_at is not None:
            body["expires_at"] = expires_at
        return self.request("POST", "/v1/tokens", json=body)["token"]

    def list_tokens(self, namespace: str | None = None) -> dict:
        """The tokens of ``namespace`` (or every token, for a global admin); no secrets."""
        params = {"namespace": namespace} if namespace else None
        return self.request("GET", "/v1/tokens", params=params)

    def revoke_token(self, token_id: int) -> dict:
        """Revoke token ``token_id``; answers the revoked token."""
        return self.request("DELETE", f"/v1/tokens/{int(token_id)}")

    def whoami(self) -> dict:
        """Who this client's token is (``GET /v1/auth/whoami``)."""
        return self.request("GET", "/v1/auth/whoami")

    # --- adapters ----------------------------------------------------------------------

    def list_adapters(self, **filters: Any) -> dict:
        """One page of adapters; filters: namespace, base_model, status, search, sort, page,
        page_size."""
        params = {k: v for k, v in filters.items() if v is not None}
        return self.request("GET", "/v1/adapters", params=params)

    def get_adapter(self, adapter_id: str) -> dict:
        return self.request("GET", f"/v1/adapters/{quote(adapter_id)}")

    def get_version(self, namespace: str, name: str, version: str) -> dict:
        return self.request("GET", f"/v1/adapters/{quote(namespace)}/{quote(name)}/{version}")

    def list_versions(self, namespace: str, name: str) -> dict:
        return self.request("GET", f"/v1/adapters/{quote(namespace)}/{quote(name)}")

    def resolve(self, ref: str) -> dict:
        """An adapter by id (``ad_...``) or coordinates (``namespace/name@version``)."""
        if "@" in ref and "/" in ref:
            path, version = ref.rsplit("@", 1)
            namespace, name = path.split("/", 1)
            return self.get_version(namespace, name, version)
        return self.get_adapter(ref)

    def set_status(
        self,
        adapter_id: str,
        status: str,
        reason: str | None = None,
        *,
        drop_from_aliases: bool = False,
    ) -> dict:
        """Approve (``ready``), reject or archive an adapter version; a version an alias
        routes to is ``ApiError(409, "alias_target")`` unless ``drop_from_aliases``."""
        body: dict[str, Any] = {"status": status}
        if reason is not None:
            body["reason"] = reason
        if drop_from_aliases:
            body["drop_from_aliases"] = True
        return self.request("PATCH", f"/v1/adapters/{quote(adapter_id)}", json=body)

    def set_pinned(self, adapter_id: str, pinned: bool) -> dict:
        """Pin (engines keep it resident) or unpin an adapter version."""
        return self.request("PATCH", f"/v1/adapters/{quote(adapter_id)}", json={"pinned": pinned})

    # --- aliases (``namespace/name@alias``) -------------------------------------------------

    @staticmethod
    def _aliases(namespace: str, name: str, alias: str | None = None) -> str:
        path = f"/v1/adapters/{quote(namespace)}/{quote(name)}/aliases"
        return path if alias is None else f"{path}/{quote(alias)}"

    def set_alias(
        self,
        namespace: str,
        name: str,
        alias: str,
        targets: Sequence[tuple[str, int]],
        *,
        pinned: bool = False,
        reason: str | None = None,
    ) -> dict:
        """Point ``namespace/name@alias`` at ``targets`` ((version, weight) pairs, weights
        summing to 100); returns the alias."""
        body: dict[str, Any] = {
            "targets": [{"version": v, "weight": w} for v, w in targets],
            "pinned": pinned,
        }
        if reason is not None:
            body["reason"] = reason
        return self.request("PUT", self._aliases(namespace, name, alias), json=body)

    def get_alias(self, namespace: str, name: str, alias: str) -> dict:
        """One alias (``latest``: the implicit highest ready version)."""
        return self.request("GET", self._aliases(namespace, name, alias))

    def list_aliases(self, namespace: str, name: str) -> dict:
        """Every alias of ``namespace/name``, then the implicit ``latest``."""
        return self.request("GET", self._aliases(namespace, name))

    def alias_history(self, namespace: str, name: str, alias: str) -> dict:
        """Every revision of an alias, oldest first."""
        return self.request("GET", self._aliases(namespace, name, alias) + "/history")

    def delete_alias(self, namespace: str, name: str, alias: str) -> dict:
        """Delete an alias (its history stays)."""
        return self.request("DELETE", self._aliases(namespace, name, alias))

    def update_adapter(self, adapter_id: str, **changes: Any) -> dict:
        """Edit metadata (description, custom_fields)."""
        return self.request("PATCH", f"/v1/adapters/{quote(adapter_id)}", json=changes)

    def delete_adapter(
        self, adapter_id: str, *, purge: bool = False, drop_from_aliases: bool = False
    ) -> dict | None:
        """Archive an adapter, or with ``purge`` (admin) remove it; ``drop_from_aliases``
        as for ``set_status``."""
        params = {"purge": "true"} if purge else {}
        if drop_from_aliases:
            params["drop_from_aliases"] = "true"
        return self.request("DELETE", f"/v1/adapters/{quote(adapter_id)}", params=params)

    def check_upload(self, *, namespace: str, name: str, version: str, base_model: str) -> dict:
        """What an upload to these coordinates would be refused for before its files: this
        token's role, the coordinates, the namespace, the base model (``ApiError`` with the
        upload's own status and code). Returns ``approval_policy`` and ``exists``."""
        params = {"namespace": namespace, "name": name, "version": version}
        return self.request(
            "GET", "/v1/adapters/upload-check", params={**params, "base_model": base_model}
        )

    def fleet(self, base_model: str) -> dict:
        """``{"generation": N, "adapters": [...], "aliases": [...]}``: the ready set and its
        aliases engines reconcile with."""
        return self.request("GET", "/v1/fleet", params={"base_model": base_model})

    def upload_adapter(
        self,
        source_dir: Path,
        *,
        namespace: str,
        name: str,
        version: str,
        base_model: str,
        provenance: dict | None = None,
        description: str | None = None,
        progress: Progress | None = None,
        include: Sequence[str] = (),
        exclude: Sequence[str] = (),
        check_first: bool = True,
    ) -> dict:
        """Upload the files under ``source_dir`` (``upload_files``: trainer state left out
        unless ``include`` names it) as a new version; returns the entity.

        With ``check_first`` (the default) ``check_upload`` runs before any file is read, so a
        refusal for the token, coordinates, namespace or base model costs one small request.
        Re-uploading the same bytes returns the existing version; different bytes under the
        same coordinates raise ``ApiError(409, "version_conflict")``.
        """
        files, _ = upload_files(Path(source_dir), include=include, exclude=exclude)
        data = {"namespace": namespace, "name": name, "version": version, "base_model": base_model}
        if check_first:
            self.check_upload(**data)
        if provenance is not None:
            data["provenance"] = json.dumps(provenance)
        if description is not None:
            data["description"] = description
        handles = [open(path, "rb") for _, path in files]  # noqa: SIM115 - closed below
        try:
            parts = [
                ("files", (rel, _CountingReader(fh, progress) if progress else fh))
                for (rel, _), fh in zip(files, handles, strict=True)
            ]
            # Big adapters over a slow link: no read timeout while the body is sent.
            timeout = httpx.Timeout(self._http.timeout.connect, read=None, write=None, pool=None)
            return self.request("POST", "/v1/adapters", data=data, files=parts, timeout=timeout)
        finally:
            for fh in handles:
                fh.close()
